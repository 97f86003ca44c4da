//! Replies keyway writes itself, in the client's protocol version: RESP3
//! maps, nulls and doubles become their RESP2 forms for RESP2 clients.

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

pub struct ReplyBuf {
    buf: BytesMut,
    proto: Protocol,
}

impl ReplyBuf {
    pub fn new(proto: Protocol) -> Self {
        ReplyBuf {
            buf: BytesMut::new(),
            proto,
        }
    }

    pub fn freeze(self) -> Bytes {
        self.buf.freeze()
    }

    pub fn simple(&mut self, s: &str) -> &mut Self {
        self.line(b'+', s.as_bytes())
    }

    /// `msg` must already carry its code (`ERR ...`, `NOAUTH ...`); CR/LF
    /// are replaced so an error stays one line.
    pub fn error(&mut self, msg: &str) -> &mut Self {
        self.error_bytes(msg.as_bytes())
    }

    /// An error line with the bytes as given (a client's own bytes are
    /// echoed as Redis echoes them, not re-encoded); CR and LF become
    /// spaces so the line stays one line.
    pub fn error_bytes(&mut self, msg: &[u8]) -> &mut Self {
        let clean: Vec<u8> = msg
            .iter()
            .map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c })
            .collect();
        self.line(b'-', &clean)
    }

    pub fn int(&mut self, n: i64) -> &mut Self {
        self.line(b':', n.to_string().as_bytes())
    }

    pub fn bulk(&mut self, data: &[u8]) -> &mut Self {
        self.line(b'$', data.len().to_string().as_bytes());
        self.buf.put_slice(data);
        self.buf.put_slice(b"\r\n");
        self
    }

    pub fn null(&mut self) -> &mut Self {
        match self.proto {
            Protocol::Resp2 => self.raw(b"$-1\r\n"),
            Protocol::Resp3 => self.raw(b"_\r\n"),
        }
    }

    /// The null of a command that answers an array (BLPOP's timeout).
    pub fn null_array(&mut self) -> &mut Self {
        match self.proto {
            Protocol::Resp2 => self.raw(b"*-1\r\n"),
            Protocol::Resp3 => self.raw(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) -> &mut Self {
        self.line(b'*', len.to_string().as_bytes())
    }

    /// A map header; RESP2 clients get a flat array of twice the length.
    pub fn map(&mut self, pairs: usize) -> &mut Self {
        match self.proto {
            Protocol::Resp2 => self.array(pairs * 2),
            Protocol::Resp3 => self.line(b'%', pairs.to_string().as_bytes()),
        }
    }

    /// Text that RESP3 marks as verbatim (INFO, CLIENT INFO); a bulk in RESP2.
    pub fn verbatim(&mut self, text: &[u8]) -> &mut Self {
        match self.proto {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.line(b'=', (text.len() + 4).to_string().as_bytes());
                self.buf.put_slice(b"txt:");
                self.buf.put_slice(text);
                self.buf.put_slice(b"\r\n");
                self
            }
        }
    }

    /// Bytes that are already a complete frame (or frames).
    pub fn raw(&mut self, frame: &[u8]) -> &mut Self {
        self.buf.put_slice(frame);
        self
    }

    fn line(&mut self, kind: u8, body: &[u8]) -> &mut Self {
        self.buf.put_u8(kind);
        self.buf.put_slice(body);
        self.buf.put_slice(b"\r\n");
        self
    }
}

/// One-frame shorthands for the common cases.
pub fn error(msg: &str) -> Bytes {
    error_bytes(msg.as_bytes())
}

pub fn error_bytes(msg: &[u8]) -> Bytes {
    let mut r = ReplyBuf::new(Protocol::Resp2);
    r.error_bytes(msg);
    r.freeze()
}

pub fn simple(s: &str) -> Bytes {
    let mut r = ReplyBuf::new(Protocol::Resp2);
    r.simple(s);
    r.freeze()
}

pub fn int(n: i64) -> Bytes {
    let mut r = ReplyBuf::new(Protocol::Resp2);
    r.int(n);
    r.freeze()
}

pub fn bulk(data: &[u8]) -> Bytes {
    let mut r = ReplyBuf::new(Protocol::Resp2);
    r.bulk(data);
    r.freeze()
}
