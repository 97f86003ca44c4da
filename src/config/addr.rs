//! A server's address: a host and a port, as a pool URL writes it and as
//! Redis names a node in its replies (Sentinel, `MOVED`, `CLUSTER SHARDS`).
//! Shown as `host:port`, an IPv6 host in brackets.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl Addr {
    pub fn new(host: impl Into<String>, port: u16) -> Addr {
        Addr {
            host: host.into(),
            port,
        }
    }

    /// `host:port` as Redis names a node in `MOVED` and `ASK`
    /// (`[v6]:port` accepted too). `None` for anything else or port 0.
    pub fn parse(text: &str) -> Option<Addr> {
        let (host, port) = text.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Some(Addr {
            host: host.to_string(),
            port: port.parse().ok().filter(|&p| p != 0)?,
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_and_reads_v4_names_and_v6() {
        for (text, host, port) in [
            ("127.0.0.1:7001", "127.0.0.1", 7001),
            ("redis-1:6379", "redis-1", 6379),
            ("[::1]:7002", "::1", 7002),
        ] {
            let addr = Addr::parse(text).expect(text);
            assert_eq!(addr, Addr::new(host, port));
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(Addr::parse("127.0.0.1:0"), None);
        assert_eq!(Addr::parse("no-port"), None);
    }
}
