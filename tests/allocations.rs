//! Forwarding a GET or SET allocates nothing once a client is warm. A
//! counting global allocator counts the allocations made on keyway's own
//! event-loop thread (keyway runs in-process, in front of a real Redis)
//! while a plain TCP client on another thread drives it. Each keyway has a
//! counter of its own: the tests run in parallel, and one keyway warming
//! up must not be counted in another's measurement.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyway::config::Config;
use keyway::server::Server;
use support::RedisServer;

struct Counting;

thread_local! {
    /// Set on a keyway event-loop thread only: that keyway's counter.
    static COUNTER: Cell<Option<&'static AtomicU64>> = const { Cell::new(None) };
}

fn count() {
    if let Some(counter) = COUNTER.with(Cell::get) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// keyway on a current-thread runtime of its own thread (its default
/// `worker_threads = 1`), in front of the pool at `url`: its port and the
/// counter of the allocations made on its thread.
fn start_keyway(url: &str) -> (u16, &'static AtomicU64) {
    let port = support::free_port();
    let admin = support::free_port();
    // Health probes and cluster topology reads every 10 minutes: their
    // connections are not part of any request.
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\n\
         health_interval_ms = 600000\n[backend]\ncluster_refresh_ms = 600000\n\
         [pools.cache]\nurl = \"{url}\"\n[routes]\ndefault = \"cache\"\n"
    );
    let config = Config::from_toml(&toml, "allocations test", |_| None).expect("valid config");
    let counter: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    std::thread::spawn(move || {
        COUNTER.with(|c| c.set(Some(counter)));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let server = Server::bind(config).await.expect("bind");
            server.run(std::future::pending()).await;
        });
    });
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (port, counter);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("keyway did not listen on {port}");
}

/// Sends `batches` pipelines of `depth` SET+GET pairs and reads every reply.
fn drive(client: &mut TcpStream, batches: usize, depth: usize) {
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..depth {
        let key = format!("user:{i}");
        request.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$5\r\nvalue\r\n",
                key.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(
            format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
        );
        expected.extend_from_slice(b"+OK\r\n$5\r\nvalue\r\n");
    }
    let mut got = vec![0u8; expected.len()];
    for _ in 0..batches {
        client.write_all(&request).expect("write");
        client.read_exact(&mut got).expect("read replies");
        assert_eq!(got, expected, "keyway answered something else");
    }
}

fn allocations_during(counter: &AtomicU64, f: impl FnOnce()) -> u64 {
    let before = counter.load(Ordering::Relaxed);
    f();
    counter.load(Ordering::Relaxed) - before
}

#[test]
fn a_warm_client_forwards_get_and_set_without_allocating() {
    let redis = RedisServer::start();
    let (port, counter) = start_keyway(&redis.url());
    assert_warm_requests_do_not_allocate(port, counter);
}

#[test]
fn a_warm_client_of_a_cluster_pool_does_not_allocate_either() {
    let cluster = support::ClusterSetup::start();
    let (port, counter) = start_keyway(&cluster.seeds_url());
    assert_warm_requests_do_not_allocate(port, counter);
}

fn assert_warm_requests_do_not_allocate(port: u16, counter: &AtomicU64) {
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");

    // Warm: buffers, queues and metric series reach their working size.
    drive(&mut client, 2_000, 1);
    drive(&mut client, 200, 16);

    let unpipelined = allocations_during(counter, || drive(&mut client, 5_000, 1));
    let pipelined = allocations_during(counter, || drive(&mut client, 500, 16));
    println!(
        "allocations on keyway's thread: {unpipelined} for 10,000 unpipelined requests, \
         {pipelined} for 16,000 in pipelines of 32"
    );
    // What remains are read-buffer refills: a buffer still referenced by
    // requests or replies in flight when it fills is replaced, not reused,
    // which costs two allocations per 16 KiB of requests (client side,
    // pipelined) or 48 KiB of replies (backend side). Per request it is
    // nothing; one allocation per request would be 10,000 here.
    for (what, allocations, requests) in [
        ("unpipelined", unpipelined, 10_000),
        ("pipelined", pipelined, 16_000),
    ] {
        assert!(
            allocations * 100 < requests,
            "{what} GET/SET allocated {allocations} times for {requests} requests"
        );
    }
}
