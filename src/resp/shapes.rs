//! Reading the few reply shapes keyway merges (integers, bulk strings,
//! arrays of frames) straight from the forwarded bytes, without decoding
//! anything it passes through unchanged.

use super::FrameScanner;

/// The header line of a frame: its type byte and the text up to CRLF, plus
/// the header's length.
fn header(frame: &[u8]) -> Option<(u8, &[u8], usize)> {
    let kind = *frame.first()?;
    let cr = frame.iter().position(|&b| b == b'\r')?;
    Some((kind, &frame[1..cr], cr + 2))
}

fn number(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

/// A null reply, of RESP2 (`*-1`, `$-1`) or RESP3 (`_`): what a blocking
/// command answers when it timed out.
pub fn is_null(frame: &[u8]) -> bool {
    matches!(frame, b"*-1\r\n" | b"$-1\r\n" | b"_\r\n")
}

pub fn integer(frame: &[u8]) -> Option<i64> {
    match header(frame)? {
        (b':', text, _) => number(text),
        _ => None,
    }
}

/// The payload of a bulk string, or of a verbatim string without its `txt:`.
pub fn bulk(frame: &[u8]) -> Option<&[u8]> {
    let (kind, text, start) = header(frame)?;
    let len = usize::try_from(number(text)?).ok()?;
    let data = frame.get(start..start + len)?;
    match kind {
        b'$' => Some(data),
        b'=' => data.get(4..),
        _ => None,
    }
}

/// The element frames of an array, set or push reply, each as its own bytes.
pub fn elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let (kind, text, mut at) = header(frame)?;
    if !matches!(kind, b'*' | b'~' | b'>') {
        return None;
    }
    let n = number(text)?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    let mut scanner = FrameScanner::default();
    for _ in 0..n {
        let len = scanner.next_frame(&frame[at..]).ok()??;
        out.push(&frame[at..at + len]);
        at += len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(integer(b":42\r\n"), Some(42));
        assert_eq!(bulk(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(bulk(b"=7\r\ntxt:abc\r\n"), Some(&b"abc"[..]));
        let e = elements(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:1\r\n").unwrap();
        assert_eq!(e, [&b"$1\r\na\r\n"[..], b"$-1\r\n", b"*1\r\n:1\r\n"]);
        assert!(is_error(b"-ERR x\r\n"));
    }
}
