//! Property-based fuzzing of what reads untrusted bytes: the request parser
//! (client bytes), the reply scanner (backend bytes) and the config loader
//! (operator files). Stable Rust, bounded: 256 cases per property in the
//! test command; a longer run is `PROPTEST_CASES=100000 cargo test
//! --release --test fuzz` (see docs/testing.md).

use bytes::BytesMut;
use proptest::prelude::*;

use keyway::resp::{FrameScanner, ProtocolError, Request, RequestParser};

/// A request's arguments and the bytes keyway would forward.
type Parsed = (Vec<Vec<u8>>, Vec<u8>);

/// Parses `input` fed in pieces of the given sizes; the requests, and the
/// error that ended the stream, if any.
fn parse_chunked(
    input: &[u8],
    chunks: &[usize],
    unauthenticated: bool,
) -> (Vec<Parsed>, Option<ProtocolError>) {
    let mut parser = RequestParser::default();
    parser.set_unauthenticated(unauthenticated);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut sizes = chunks.iter().cycle();
    while fed < input.len() {
        let n = (*sizes.next().unwrap_or(&1)).max(1).min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        loop {
            match parser.next(&mut buf) {
                Ok(Some(r)) => {
                    out.push((r.args().map(<[u8]>::to_vec).collect(), r.bytes().to_vec()))
                }
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    Request::from_args(args).bytes().to_vec()
}

/// Client bytes: well-formed requests, the same with a byte changed or
/// inserted (signs, zeros, CR/LF), inline lines, and noise.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    let arg = prop::collection::vec(any::<u8>(), 0..24);
    let args = prop::collection::vec(arg, 1..6);
    let requests = prop::collection::vec(args, 1..4)
        .prop_map(|rs| rs.iter().flat_map(|a| encode(a)).collect::<Vec<u8>>());
    let special = prop::sample::select(vec![b'0', b'-', b'+', b'\r', b'\n', b'$', b'*', b' ', 0u8]);
    prop_oneof![
        requests.clone(),
        (
            requests.clone(),
            any::<prop::sample::Index>(),
            special.clone()
        )
            .prop_map(|(mut b, at, c)| {
                let i = at.index(b.len());
                b.insert(i, c);
                b
            }),
        (requests, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut b, at, c)| {
            let i = at.index(b.len());
            b[i] = c;
            b
        }),
        prop::collection::vec(
            prop::sample::select(b"SET GET k v \"'\\x41\r\n\t\x0b\x0c".to_vec()),
            0..64
        ),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    /// What the parser accepts as a multibulk is exactly the canonical
    /// encoding of its arguments, so keyway never forwards a frame Redis
    /// would read differently or refuse (Redis then closes the shared
    /// connection). Feeding the bytes in pieces changes nothing.
    #[test]
    fn accepted_requests_are_canonical_and_chunking_changes_nothing(
        input in client_bytes(),
        chunks in prop::collection::vec(1usize..64, 1..8),
    ) {
        let whole = parse_chunked(&input, &[input.len().max(1)], false);
        let pieces = parse_chunked(&input, &chunks, false);
        prop_assert_eq!(&whole, &pieces);
        for (args, bytes) in &whole.0 {
            prop_assert!(!args.is_empty());
            prop_assert_eq!(&encode(args), bytes);
        }
    }

    /// Before AUTH, nothing accepted is larger than Redis 7 allows: a
    /// multibulk of at most 10 arguments of at most 16 KiB, or an inline
    /// line (which Redis does not limit further than its 64 KiB).
    #[test]
    fn unauthenticated_requests_stay_small(input in client_bytes()) {
        let (requests, _) = parse_chunked(&input, &[7], true);
        for (args, _) in requests {
            let multibulk_sized = args.len() <= 10 && args.iter().all(|a| a.len() <= 16 * 1024);
            let inline_sized = args.iter().map(|a| a.len() + 1).sum::<usize>() <= 64 * 1024;
            prop_assert!(multibulk_sized || inline_sized);
        }
    }
}

/// A RESP2/RESP3 reply as a backend would send it.
fn reply() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        "[a-zA-Z ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
        "[a-zA-Z ]{0,12}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
        any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
            let mut f = format!("${}\r\n", b.len()).into_bytes();
            f.extend_from_slice(&b);
            f.extend_from_slice(b"\r\n");
            f
        }),
        Just(b"$-1\r\n".to_vec()),
        Just(b"*-1\r\n".to_vec()),
        Just(b"_\r\n".to_vec()),
        Just(b"#t\r\n".to_vec()),
        Just(b",1.5\r\n".to_vec()),
        Just(b"(3492890328409238509324850943850943825024385\r\n".to_vec()),
        Just(b"=8\r\ntxt:abcd\r\n".to_vec()),
        Just(b"!9\r\nSYNTAX er\r\n".to_vec()),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        (
            prop::sample::select(vec![b'*', b'~', b'>', b'%', b'|']),
            prop::collection::vec(inner, 0..6),
        )
            .prop_map(|(kind, items)| {
                // Maps and attributes hold pairs.
                let pairs = matches!(kind, b'%' | b'|');
                let n = if pairs { items.len() / 2 } else { items.len() };
                let mut f = format!("{}{}\r\n", kind as char, n).into_bytes();
                for item in items.iter().take(if pairs { n * 2 } else { n }) {
                    f.extend_from_slice(item);
                }
                if kind == b'|' {
                    // An attribute precedes the reply it describes.
                    f.extend_from_slice(b":1\r\n");
                }
                f
            })
    })
}

proptest! {
    /// The scanner finds exactly the first frame, whatever follows it and
    /// however the bytes arrive.
    #[test]
    fn the_scanner_finds_each_frame_exactly(
        first in reply(),
        rest in prop::collection::vec(any::<u8>(), 0..32),
        step in 1usize..16,
    ) {
        let mut input = first.clone();
        input.extend_from_slice(&rest);
        let mut scanner = FrameScanner::default();
        let mut found = None;
        for end in (step..input.len() + step).step_by(step) {
            let seen = &input[..end.min(input.len())];
            match scanner.next_frame(seen) {
                Ok(Some(n)) => { found = Some(n); break; }
                Ok(None) => {}
                Err(e) => prop_assert!(false, "{e} on {:?}", String::from_utf8_lossy(seen)),
            }
        }
        prop_assert_eq!(found, Some(first.len()));
    }

    /// Backend bytes of any shape never panic the scanner.
    #[test]
    fn the_scanner_survives_any_bytes(input in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut scanner = FrameScanner::default();
        let _ = scanner.next_frame(&input);
    }

    /// The config loader answers any text with a config or an error.
    #[test]
    fn the_config_loader_survives_any_text(
        at in any::<prop::sample::Index>(),
        insert in "[\\[\\]=\"a-z_.0-9\n -]{0,16}",
        noise in ".{0,64}",
    ) {
        let reference = include_str!("../conf/keyway.toml");
        let cut = reference.char_indices().map(|(i, _)| i).nth(at.index(reference.chars().count())).unwrap_or(0);
        let mutated = format!("{}{}{}", &reference[..cut], insert, &reference[cut..]);
        let _ = keyway::config::Config::from_toml(&mutated, "fuzz", |_| None);
        let _ = keyway::config::Config::from_toml(&noise, "fuzz", |_| None);
    }
}
