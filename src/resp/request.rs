//! Client requests: complete frames split off the read buffer with their
//! argument ranges. The parser resumes where it stopped, so a 64 MiB value or
//! a 100,000-argument MSET arriving in pieces is scanned once.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;
use thiserror::Error;

/// Redis's own protocol errors; the client gets `-ERR Protocol error: ...`
/// and the connection is closed, as Redis does.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    MultibulkLength,
    #[error("invalid bulk length")]
    BulkLength,
    #[error("expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("too big inline request")]
    InlineTooBig,
    #[error("too big mbulk count string")]
    CountTooBig,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("invalid reply frame")]
    Reply,
    #[error("request larger than 4 GiB")]
    RequestTooBig,
    #[error("unauthenticated multibulk length")]
    UnauthenticatedMultibulk,
    #[error("unauthenticated bulk length")]
    UnauthenticatedBulk,
}

/// What Redis 7 lets a client send before it authenticates: a few small
/// arguments, so a stranger cannot make the proxy buffer megabytes.
const UNAUTHENTICATED_MAX_ARGS: i64 = 10;
const UNAUTHENTICATED_MAX_BULK: i64 = 16 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// Largest single argument, like Redis's `proto-max-bulk-len`.
    pub max_bulk_len: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line.
    pub max_inline: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline: 64 * 1024,
        }
    }
}

/// One complete client request. `bytes` is what the backend receives:
/// the client's own frame, or a multibulk rewrite of an inline command.
#[derive(Clone, Debug)]
pub struct Request {
    bytes: Bytes,
    args: ArgRanges,
}

/// Where each argument sits in `bytes`. GET and SET fit inline, so parsing
/// them allocates nothing; offsets are 32-bit (a request is refused above
/// 4 GiB) so a `Request`, held in every client's task, stays small.
type ArgRanges = SmallVec<[Range<u32>; 3]>;

/// Requests are limited to what 32-bit offsets can address.
const MAX_REQUEST: usize = u32::MAX as usize;

fn offset(n: usize) -> u32 {
    // Callers stay below MAX_REQUEST; saturating keeps this total anyway.
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The arguments of a request as slices, on the stack for common commands.
pub type ArgSlices<'a> = SmallVec<[&'a [u8]; 8]>;

impl Request {
    /// The request's bytes, without another reference count.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn argc(&self) -> usize {
        self.args.len()
    }

    #[inline]
    pub fn arg(&self, i: usize) -> &[u8] {
        let r = &self.args[i];
        &self.bytes[r.start as usize..r.end as usize]
    }

    #[inline]
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.args
            .iter()
            .map(|r| &self.bytes[r.start as usize..r.end as usize])
    }

    #[inline]
    pub fn arg_vec(&self) -> ArgSlices<'_> {
        self.args().collect()
    }

    /// The arguments, into a list the caller holds: collected and
    /// returned, the list (136 bytes) would be copied once more.
    #[inline]
    pub fn args_into<'a>(&'a self, into: &mut ArgSlices<'a>) {
        // Pushed one by one after one reservation: `extend` re-checked
        // where the list's storage lives for every argument.
        let bytes: &'a [u8] = &self.bytes;
        into.reserve(self.args.len());
        for r in self.args.iter() {
            // The ranges are the parser's own, always within `bytes`.
            into.push(
                bytes
                    .get(r.start as usize..r.end as usize)
                    .unwrap_or_default(),
            );
        }
    }

    /// Builds a multibulk request from arguments (split commands, tests).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let mut buf = BytesMut::new();
        buf.put_slice(format!("*{}\r\n", args.len()).as_bytes());
        let mut ranges = ArgRanges::with_capacity(args.len());
        for a in args {
            let a = a.as_ref();
            buf.put_slice(format!("${}\r\n", a.len()).as_bytes());
            let start = buf.len();
            buf.put_slice(a);
            ranges.push(offset(start)..offset(buf.len()));
            buf.put_slice(b"\r\n");
        }
        Request {
            bytes: buf.freeze(),
            args: ranges,
        }
    }
}

/// Where the parser stopped inside a multibulk request.
#[derive(Debug, Default)]
enum State {
    #[default]
    Start,
    Multibulk {
        expected: usize,
        pos: usize,
        args: ArgRanges,
    },
}

#[derive(Debug, Default)]
pub struct RequestParser {
    limits: ParseLimits,
    state: State,
    /// The client has not authenticated yet (and must): Redis's smaller
    /// limits apply to what it sends.
    unauthenticated: bool,
}

impl RequestParser {
    pub fn new(limits: ParseLimits) -> Self {
        RequestParser {
            limits,
            state: State::Start,
            unauthenticated: false,
        }
    }

    /// Whether the client still has to authenticate; checked as each
    /// length arrives, as Redis does.
    pub fn set_unauthenticated(&mut self, unauthenticated: bool) {
        self.unauthenticated = unauthenticated;
    }

    /// Splits the next complete request off `buf`, `Ok(None)` when more bytes
    /// are needed. Empty multibulks and blank inline lines are skipped.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            if let State::Start = self.state {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != b'*' {
                    match self.inline(buf)? {
                        Inline::Request(r) => return Ok(Some(r)),
                        Inline::Blank => continue,
                        Inline::Incomplete => return Ok(None),
                    }
                }
                if let Some(request) = self.whole(buf) {
                    return Ok(Some(request));
                }
                let Some((count, header_len)) = line_int(buf, 1, self.limits.max_inline)? else {
                    return Ok(None);
                };
                if count > self.limits.max_args as i64 {
                    return Err(ProtocolError::MultibulkLength);
                }
                if count > UNAUTHENTICATED_MAX_ARGS && self.unauthenticated {
                    return Err(ProtocolError::UnauthenticatedMultibulk);
                }
                if count <= 0 {
                    let _ = buf.split_to(header_len);
                    continue;
                }
                self.state = State::Multibulk {
                    expected: count as usize,
                    pos: header_len,
                    args: ArgRanges::with_capacity(count.min(1024) as usize),
                };
            }
            return self.multibulk(buf);
        }
    }

    /// The common request in one pass: a multibulk already complete in
    /// `buf`, with few arguments and short lengths, that every check
    /// passes. Anything else (incomplete, long, unusual, refused) is left
    /// to the resumable parser, which reads it again from the start and
    /// decides; so this path accepts nothing that one would not.
    fn whole(&self, buf: &mut BytesMut) -> Option<Request> {
        let bytes = &buf[..];
        let (count, mut pos) = short_number(bytes, 1)?;
        let most = if self.unauthenticated {
            UNAUTHENTICATED_MAX_ARGS as usize
        } else {
            WHOLE_MAX_ARGS
        };
        if count == 0 || count > most || count > self.limits.max_args {
            return None;
        }
        let mut args = ArgRanges::with_capacity(count);
        for _ in 0..count {
            if *bytes.get(pos)? != b'$' {
                return None;
            }
            let (len, start) = short_number(bytes, pos + 1)?;
            if len > self.limits.max_bulk_len
                || (self.unauthenticated && len as i64 > UNAUTHENTICATED_MAX_BULK)
            {
                return None;
            }
            let end = start + len;
            if bytes.get(end..end + 2)? != b"\r\n" {
                return None;
            }
            args.push(offset(start)..offset(end));
            pos = end + 2;
        }
        Some(Request {
            bytes: buf.split_to(pos).freeze(),
            args,
        })
    }

    fn multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        let State::Multibulk {
            expected,
            pos,
            args,
        } = &mut self.state
        else {
            return Ok(None);
        };
        while args.len() < *expected {
            let Some(&marker) = buf.get(*pos) else {
                return Ok(None);
            };
            if marker != b'$' {
                return Err(ProtocolError::ExpectedBulk(marker as char));
            }
            let Some((len, header_len)) = line_int(&buf[*pos..], 1, 32)? else {
                return Ok(None);
            };
            if len < 0 || len as usize > self.limits.max_bulk_len {
                return Err(ProtocolError::BulkLength);
            }
            if len > UNAUTHENTICATED_MAX_BULK && self.unauthenticated {
                return Err(ProtocolError::UnauthenticatedBulk);
            }
            let start = *pos + header_len;
            let end = start + len as usize;
            if end + 2 > MAX_REQUEST {
                return Err(ProtocolError::RequestTooBig);
            }
            if buf.len() < end + 2 {
                // Reserve for a large argument once rather than growing in steps.
                buf.reserve(end + 2 - buf.len());
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::BulkLength);
            }
            args.push(offset(start)..offset(end));
            *pos = end + 2;
        }
        let len = *pos;
        let args = std::mem::take(args);
        self.state = State::Start;
        Ok(Some(Request {
            bytes: buf.split_to(len).freeze(),
            args,
        }))
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Inline, ProtocolError> {
        // Redis finds the line's end with strchr: a NUL byte hides every
        // newline after it, and the line stays incomplete until too big.
        let end = buf.iter().position(|&b| b == b'\n' || b == 0);
        let Some(nl) = end.filter(|&i| buf[i] == b'\n') else {
            if buf.len() > self.limits.max_inline {
                return Err(ProtocolError::InlineTooBig);
            }
            return Ok(Inline::Incomplete);
        };
        if nl > self.limits.max_inline {
            return Err(ProtocolError::InlineTooBig);
        }
        let line = buf.split_to(nl + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let args = split_inline_args(line)?;
        if args.is_empty() {
            return Ok(Inline::Blank);
        }
        if args.len() > self.limits.max_args {
            return Err(ProtocolError::MultibulkLength);
        }
        Ok(Inline::Request(Request::from_args(&args)))
    }
}

enum Inline {
    Request(Request),
    Blank,
    Incomplete,
}

/// Arguments a request may have to take the one-pass path.
const WHOLE_MAX_ARGS: usize = 64;

/// `<digits>\r\n` at `at`, written as Redis reads a length (no sign, no
/// leading zero but `0` alone), below 100,000: the value and where the
/// line ends. `None` for anything else, complete or not.
#[inline]
fn short_number(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    // One and two digits, as nearly every count and length is.
    match *bytes.get(at..)? {
        [d @ b'0'..=b'9', b'\r', b'\n', ..] => return Some((usize::from(d - b'0'), at + 3)),
        [d1 @ b'1'..=b'9', d2 @ b'0'..=b'9', b'\r', b'\n', ..] => {
            return Some((usize::from(d1 - b'0') * 10 + usize::from(d2 - b'0'), at + 4))
        }
        _ => {}
    }
    let mut value = 0;
    let mut i = at;
    loop {
        match *bytes.get(i)? {
            d @ b'0'..=b'9' if i - at < 5 => value = value * 10 + usize::from(d - b'0'),
            b'\r' => break,
            _ => return None,
        }
        i += 1;
    }
    let digits = i - at;
    if digits == 0 || (digits > 1 && bytes[at] == b'0') || *bytes.get(i + 1)? != b'\n' {
        return None;
    }
    Some((value, i + 2))
}

/// Parses `<marker><integer>\r\n` at the start of `buf`; returns the value
/// and the header length, or `None` if the line is not complete yet. One
/// pass: it runs several times for every request.
fn line_int(
    buf: &[u8],
    skip: usize,
    max_line: usize,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let search = &buf[skip.min(buf.len())..];
    // The one- and two-digit counts and lengths nearly every request has,
    // without the general loop (canonical: no leading zero but `0` alone).
    match *search {
        [d @ b'0'..=b'9', b'\r', b'\n', ..] => return Ok(Some((i64::from(d - b'0'), skip + 3))),
        [d1 @ b'1'..=b'9', d2 @ b'0'..=b'9', b'\r', b'\n', ..] if max_line >= 2 => {
            let value = i64::from(d1 - b'0') * 10 + i64::from(d2 - b'0');
            return Ok(Some((value, skip + 4)));
        }
        _ => {}
    }
    let bad = || {
        if buf.first() == Some(&b'*') {
            ProtocolError::MultibulkLength
        } else {
            ProtocolError::BulkLength
        }
    };
    let negative = search.first() == Some(&b'-');
    let mut value: Option<i64> = Some(0);
    let mut digits = 0;
    let limit = search.len().min(max_line + 1);
    let mut cr = None;
    for (i, &b) in search[..limit]
        .iter()
        .enumerate()
        .skip(usize::from(negative))
    {
        match b {
            b'0'..=b'9' => {
                digits += 1;
                value = value
                    .and_then(|v| v.checked_mul(10))
                    .and_then(|v| v.checked_add(i64::from(b - b'0')));
            }
            b'\r' => {
                cr = Some(i);
                break;
            }
            _ => value = None,
        }
    }
    let Some(cr) = cr else {
        if search.len() > max_line {
            return Err(ProtocolError::CountTooBig);
        }
        return Ok(None);
    };
    if search.len() < cr + 2 {
        return Ok(None);
    }
    if search[cr + 1] != b'\n' || digits == 0 {
        return Err(bad());
    }
    // As Redis's string2ll: `0` alone, else no leading zero (`01`, `-0`);
    // a sign other than `-` already failed above. Longer than 20
    // characters cannot be written without a leading zero or overflowing.
    if search[usize::from(negative)] == b'0' && (digits > 1 || negative) {
        return Err(bad());
    }
    let value = value.ok_or_else(bad)?;
    Ok(Some((if negative { -value } else { value }, skip + cr + 2)))
}

/// Whether `text` is written as Redis's `string2ll` demands of a number:
/// `0`, or an optional `-` and a first digit 1-9, under 21 characters.
/// `$01`, `-0` or `+1` are refused: Redis closes a connection that sends
/// them, so one client's frame must never reach a shared connection.
fn canonical(text: &[u8]) -> bool {
    if text == b"0" {
        return true;
    }
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    text.len() < 21 && matches!(digits.first(), Some(b'1'..=b'9'))
}

/// An optionally negative decimal integer, as Redis's `string2ll` reads a
/// length: digits only, no sign but `-`, no spaces, no leading zero.
pub fn decimal(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !canonical(text) {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

/// C's `isspace`, which Redis uses between arguments and after a quote.
fn c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits an inline command line the way Redis's `sdssplitargs` does:
/// arguments separated by `isspace`, a word ended by space, tab, CR or LF,
/// "double quotes" (with \n, \xHH escapes) and 'single quotes' opening
/// anywhere in a word, and a closing quote followed by a space or the end.
pub fn split_inline_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && c_space(line[i]) {
            i += 1;
        }
        if i >= n {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            if in_double {
                if i >= n {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                let c = line[i];
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        arg.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < n {
                    arg.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    if i + 1 < n && !c_space(line[i + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                arg.push(c);
                i += 1;
            } else if in_single {
                if i >= n {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    arg.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if i + 1 < n && !c_space(line[i + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                arg.push(c);
                i += 1;
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\t' | b'\n' | b'\r' => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    c => arg.push(c),
                }
                i += 1;
            }
        }
        args.push(arg);
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {

    #[test]
    fn lengths_parse_as_redis_reads_them() {
        let parse = |line: &[u8]| line_int(line, 1, 32);
        assert_eq!(parse(b"$12\r\n").unwrap(), Some((12, 5)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((-1, 5)));
        assert_eq!(parse(b"*0\r\n").unwrap(), Some((0, 4)));
        assert_eq!(parse(b"$12").unwrap(), None);
        assert_eq!(parse(b"$12\r").unwrap(), None);
        for bad in [
            &b"$\r\n"[..],
            b"$-\r\n",
            b"$1a\r\n",
            b"$+1\r\n",
            b"$ 1\r\n",
            b"$12\rx",
            b"$99999999999999999999\r\n",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            line_int(b"*123456789", 1, 4),
            Err(ProtocolError::CountTooBig)
        ));
    }
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parser.next(&mut buf)? {
            out.push(r.args().map(<[u8]>::to_vec).collect());
        }
        Ok(out)
    }

    #[test]
    fn multibulk_pipeline() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(
            got,
            vec![vec![b"GET".to_vec(), b"a".to_vec()], vec![b"PING".to_vec()]]
        );
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input = b"*3\r\n$3\r\nSET\r\n$4\r\nk\r\n\0\r\n$5\r\nhello\r\n";
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for &b in input.iter() {
            buf.put_u8(b);
            if let Some(r) = parser.next(&mut buf).unwrap() {
                got = Some(r);
            }
        }
        let r = got.expect("complete request");
        assert_eq!(r.arg(1), b"k\r\n\0");
        assert_eq!(r.bytes().as_ref(), input);
        assert!(buf.is_empty());
    }

    #[test]
    fn inline_commands_split_as_redis_splits_them() {
        let split = |line: &[u8]| split_inline_args(line);
        // \v and \f separate arguments only before a word, not inside one.
        assert_eq!(
            split(b"\x0b\x0cSET a\x0bb c\x0cd").unwrap(),
            vec![b"SET".to_vec(), b"a\x0bb".to_vec(), b"c\x0cd".to_vec()]
        );
        // A quote opens anywhere in a word.
        assert_eq!(
            split(b"ECHO a'b'").unwrap(),
            vec![b"ECHO".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(split(b"ECHO a\"b\"c"), Err(ProtocolError::UnbalancedQuotes));
        // A closing quote may be followed by \v.
        assert_eq!(
            split(b"ECHO \"a\"\x0b").unwrap(),
            vec![b"ECHO".to_vec(), b"a".to_vec()]
        );
        // A NUL byte hides the newline: the line is incomplete.
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(&b"ECHO a\0b\r\nPING\r\n"[..]);
        assert!(parser.next(&mut buf).unwrap().is_none());
    }

    #[test]
    fn inline_commands() {
        let got = parse_all(b"SET k \"a b\\x41\\n\"\r\n\r\nGET 'it''\n").err();
        assert_eq!(got, Some(ProtocolError::UnbalancedQuotes));
        let got = parse_all(b"SET k \"a b\\x41\\n\"\r\n\r\nPING\n").unwrap();
        assert_eq!(
            got[0],
            vec![b"SET".to_vec(), b"k".to_vec(), b"a bA\n".to_vec()]
        );
        assert_eq!(got[1], vec![b"PING".to_vec()]);
    }

    #[test]
    fn protocol_errors() {
        assert_eq!(
            parse_all(b"*x\r\n").err(),
            Some(ProtocolError::MultibulkLength)
        );
        assert_eq!(
            parse_all(b"*1\r\n:1\r\n").err(),
            Some(ProtocolError::ExpectedBulk(':'))
        );
        assert_eq!(
            parse_all(b"*1\r\n$-3\r\n").err(),
            Some(ProtocolError::BulkLength)
        );
        let mut p = RequestParser::new(ParseLimits {
            max_bulk_len: 10,
            ..ParseLimits::default()
        });
        let mut buf = BytesMut::from(&b"*1\r\n$11\r\n"[..]);
        assert_eq!(p.next(&mut buf).err(), Some(ProtocolError::BulkLength));
    }

    #[test]
    fn lengths_redis_would_refuse_are_refused() {
        for bad in [
            &b"*2\r\n$3\r\nGET\r\n$01\r\na\r\n"[..],
            b"*2\r\n$3\r\nGET\r\n$-0\r\n",
            b"*2\r\n$3\r\nGET\r\n$+1\r\na\r\n",
            b"*02\r\n$3\r\nGET\r\n$1\r\na\r\n",
            b"*-0\r\n",
            b"*2\r\n$3\r\nGET\r\n$000000000000000000001\r\na\r\n",
        ] {
            assert!(
                parse_all(bad).is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_all(b"*1\r\n$0\r\n\r\n").unwrap(),
            vec![vec![Vec::<u8>::new()]]
        );
        assert_eq!(decimal(b"01"), None);
        assert_eq!(decimal(b"-0"), None);
        assert_eq!(decimal(b"+1"), None);
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"-12"), Some(-12));
    }

    #[test]
    fn unauthenticated_clients_send_little() {
        let mut p = RequestParser::default();
        p.set_unauthenticated(true);
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$16385\r\n"[..]);
        assert_eq!(
            p.next(&mut buf).err(),
            Some(ProtocolError::UnauthenticatedBulk)
        );
        let mut p = RequestParser::default();
        p.set_unauthenticated(true);
        let mut buf = BytesMut::from(&b"*11\r\n"[..]);
        assert_eq!(
            p.next(&mut buf).err(),
            Some(ProtocolError::UnauthenticatedMultibulk)
        );
        let mut p = RequestParser::default();
        p.set_unauthenticated(true);
        let mut buf = BytesMut::from(&b"*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$6\r\nsecret\r\n"[..]);
        assert!(p.next(&mut buf).unwrap().is_some());
    }
}
