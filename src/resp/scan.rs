//! Reply frame boundaries. A backend's reply is forwarded as the bytes it
//! sent; keyway only needs to know where each frame ends. The scanner keeps
//! its place between reads so a huge array arriving in pieces is walked once.

use super::ProtocolError;

#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Bytes of the current frame already walked.
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    open: Vec<u64>,
}

impl FrameScanner {
    /// Bytes of the frame in progress walked so far: whole elements, which
    /// may be passed on before the frame ends. The caller that splits them
    /// off says so with `consumed`.
    pub fn walked(&self) -> usize {
        self.pos
    }

    /// The first `n` walked bytes were split off the buffer.
    pub fn consumed(&mut self, n: usize) {
        self.pos -= n.min(self.pos);
    }

    /// Length of the first complete frame in `buf` (RESP2 or RESP3, including
    /// a leading attribute), or `None` until it is all there. After `Some`,
    /// the caller splits that many bytes off and the scanner starts afresh.
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            let Some(&kind) = buf.get(self.pos) else {
                return Ok(None);
            };
            let Some(cr) = memchr_cr(&buf[self.pos + 1..]) else {
                return Ok(None);
            };
            let line_end = self.pos + 1 + cr;
            if buf.len() < line_end + 2 {
                return Ok(None);
            }
            let line = &buf[self.pos + 1..line_end];
            let mut next = line_end + 2;
            let children: u64 = match kind {
                b'+' | b'-' | b':' | b',' | b'#' | b'(' | b'_' => 0,
                b'$' | b'!' | b'=' => {
                    let n = parse_len(line)?;
                    if n >= 0 {
                        let end = next
                            .checked_add(n as usize + 2)
                            .ok_or(ProtocolError::Reply)?;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        next = end;
                    }
                    0
                }
                b'*' | b'~' | b'>' => parse_len(line)?.max(0) as u64,
                b'%' => parse_len(line)?.max(0) as u64 * 2,
                // An attribute and the value it annotates count as one element.
                b'|' => parse_len(line)?.max(0) as u64 * 2 + 1,
                _ => return Err(ProtocolError::Reply),
            };
            self.pos = next;
            if children > 0 {
                self.open.push(children);
                continue;
            }
            loop {
                match self.open.last_mut() {
                    None => {
                        let len = self.pos;
                        self.pos = 0;
                        return Ok(Some(len));
                    }
                    Some(remaining) => {
                        *remaining -= 1;
                        if *remaining > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// A null reply in either protocol: `$-1`, `*-1` or `_`.
pub fn is_nil(frame: &[u8]) -> bool {
    frame.starts_with(b"$-1\r\n") || frame.starts_with(b"*-1\r\n") || frame.starts_with(b"_\r\n")
}

fn memchr_cr(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\r')
}

fn parse_len(line: &[u8]) -> Result<i64, ProtocolError> {
    super::request::decimal(line).ok_or(ProtocolError::Reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<usize> {
        let mut s = FrameScanner::default();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(n) = s.next_frame(&input[at..]).unwrap() {
            out.push(n);
            at += n;
        }
        out
    }

    #[test]
    fn resp2_frames() {
        assert_eq!(
            frames(b"+OK\r\n$-1\r\n$3\r\na\r\n\r\n*2\r\n:1\r\n*-1\r\n"),
            [5, 5, 9, 13]
        );
    }

    #[test]
    fn resp3_frames() {
        let map = b"%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n,1.5\r\n";
        assert_eq!(frames(map), [map.len()]);
        let attr = b"|1\r\n+ttl\r\n:3\r\n$1\r\nx\r\n";
        assert_eq!(frames(attr), [attr.len()]);
        let nested_attr = b"*2\r\n|1\r\n+a\r\n:1\r\n:2\r\n#t\r\n";
        assert_eq!(frames(nested_attr), [nested_attr.len()]);
        assert_eq!(
            frames(b"_\r\n=8\r\ntxt:abcd\r\n>2\r\n+m\r\n+x\r\n(1\r\n"),
            [3, 14, 12, 4]
        );
    }

    #[test]
    fn partial_then_complete() {
        let input = b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n";
        let mut s = FrameScanner::default();
        for cut in 0..input.len() {
            assert_eq!(s.next_frame(&input[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(s.next_frame(input).unwrap(), Some(input.len()));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(FrameScanner::default().next_frame(b"?\r\n").is_err());
        assert!(FrameScanner::default().next_frame(b"$x\r\n").is_err());
    }
}
