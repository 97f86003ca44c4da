//! Micro-benchmarks of the request path without the network: parsing a
//! request and finding its keys, routing it, and scanning replies, per
//! command shape. A counting allocator reports heap allocations per request
//! (`cargo bench --bench hot_path`) for this part; `tests/allocations.rs`
//! counts the whole forwarding path through a real Redis.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use keyway::command::CommandTable;
use keyway::config::Config;
use keyway::resp::{FrameScanner, Request, RequestParser};
use keyway::route::Router;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CONFIG: &str = r#"
[pools.session]
url = "redis://127.0.0.1:6379"
[pools.cache]
url = "redis://127.0.0.1:6380"
[pools.realtime]
url = "redis://127.0.0.1:6381"
[routes]
default = "cache"
prefixes = [
  { prefix = "session:", pool = "session" },
  { prefix = "user:", pool = "cache" },
  { prefix = "rate:", pool = "realtime" },
]
"#;

fn shapes() -> Vec<(&'static str, Vec<u8>)> {
    let enc = |args: &[&[u8]]| Request::from_args(args).bytes().to_vec();
    let small = vec![b'v'; 100];
    let large = vec![b'v'; 16 * 1024];
    let mut pipeline = Vec::new();
    for i in 0..16 {
        pipeline.extend(enc(&[b"GET", format!("user:{i}").as_bytes()]));
    }
    vec![
        ("GET", enc(&[b"GET", b"user:42:profile"])),
        ("SET 100B", enc(&[b"SET", b"session:abc", &small])),
        ("SET 16KiB", enc(&[b"SET", b"session:abc", &large])),
        (
            "MGET 10 keys, 3 pools",
            enc(&[
                b"MGET",
                b"session:1",
                b"user:2",
                b"rate:3",
                b"session:4",
                b"user:5",
                b"rate:6",
                b"session:7",
                b"user:8",
                b"rate:9",
                b"user:10",
            ]),
        ),
        ("pipeline of 16 GET", pipeline),
    ]
}

/// Parses every request in `input`, looks each up and plans its route.
/// `buf` plays the client's read buffer: it is reused, as a session's is.
fn parse_and_route(
    table: &CommandTable,
    router: &Router,
    input: &[u8],
    buf: &mut BytesMut,
    keys: &mut Vec<usize>,
) -> usize {
    let mut parser = RequestParser::default();
    buf.extend_from_slice(input);
    let mut routed = 0;
    while let Ok(Some(request)) = parser.next(buf) {
        let args = request.arg_vec();
        if let Some(entry) = table.lookup(&args) {
            keys.clear();
            table.key_indexes(entry, &args, keys);
            let name = entry.name.as_bytes();
            let split = match entry.handling {
                keyway::command::Handling::Forward(f) => f.split,
                _ => None,
            };
            let _ = router.plan(name, split, &request, keys, 0);
            routed += 1;
        }
    }
    routed
}

fn bench(c: &mut Criterion) {
    let config = Config::from_toml(CONFIG, "bench", |_| None).expect("valid bench config");
    let router = Router::new(&config);
    let table = CommandTable::builtin();
    let mut keys = Vec::with_capacity(64);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut group = c.benchmark_group("parse+route");
    for (name, input) in shapes() {
        let requests = parse_and_route(&table, &router, &input, &mut buf, &mut keys) as u64;
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..1000 {
            parse_and_route(&table, &router, &input, &mut buf, &mut keys);
        }
        let per_request =
            (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / (1000 * requests) as f64;
        eprintln!("allocations per request, {name}: {per_request:.1}");
        group.throughput(Throughput::Elements(requests));
        group.bench_function(name, |b| {
            b.iter(|| parse_and_route(&table, &router, &input, &mut buf, &mut keys))
        });
    }
    group.finish();

    // Reply scanning: a bulk reply, an MGET reply of 10 values, 16 replies.
    let mut replies = Vec::new();
    replies.push((
        "bulk 100B",
        format!("$100\r\n{}\r\n", "v".repeat(100)).into_bytes(),
    ));
    let mut mget = b"*10\r\n".to_vec();
    for _ in 0..10 {
        mget.extend_from_slice(b"$5\r\nvalue\r\n");
    }
    replies.push(("MGET reply of 10", mget));
    replies.push(("16 bulk replies", b"$5\r\nvalue\r\n".repeat(16)));
    let mut group = c.benchmark_group("scan replies");
    for (name, input) in replies {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut scanner = FrameScanner::default();
                let mut at = 0;
                while let Ok(Some(n)) = scanner.next_frame(&input[at..]) {
                    at += n;
                }
                at
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
