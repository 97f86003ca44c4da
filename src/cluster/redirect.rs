//! The replies by which a cluster node says "not here": `-MOVED slot
//! host:port` (the slot lives there now), `-ASK slot host:port` (this one
//! key is there while the slot migrates), `-TRYAGAIN` (a multi-key request
//! during a migration) and `-CLUSTERDOWN`. keyway follows them; a client
//! sees one only when following failed.

use crate::config::Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved { slot: u16, addr: Addr },
    Ask { slot: u16, addr: Addr },
    TryAgain,
    Down,
}

impl Redirect {
    /// `None` for every other reply; cheap for them (one byte compared).
    pub fn parse(reply: &[u8]) -> Option<Redirect> {
        if reply.first() != Some(&b'-') {
            return None;
        }
        let line = reply.get(1..reply.len().saturating_sub(2))?;
        let line = std::str::from_utf8(line).ok()?;
        let mut words = line.split(' ');
        let kind = words.next()?;
        let mut target = || -> Option<(u16, Addr)> {
            let slot = words.next()?.parse().ok()?;
            let addr = Addr::parse(words.next()?)?;
            Some((slot, addr))
        };
        match kind {
            "MOVED" => target().map(|(slot, addr)| Redirect::Moved { slot, addr }),
            "ASK" => target().map(|(slot, addr)| Redirect::Ask { slot, addr }),
            "TRYAGAIN" => Some(Redirect::TryAgain),
            "CLUSTERDOWN" => Some(Redirect::Down),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_redirections() {
        assert_eq!(
            Redirect::parse(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved {
                slot: 3999,
                addr: Addr {
                    host: "127.0.0.1".into(),
                    port: 6381
                }
            })
        );
        assert!(matches!(
            Redirect::parse(b"-ASK 1 [::1]:7000\r\n"),
            Some(Redirect::Ask { slot: 1, .. })
        ));
        assert_eq!(
            Redirect::parse(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::TryAgain)
        );
        assert_eq!(
            Redirect::parse(b"-CLUSTERDOWN Hash slot not served\r\n"),
            Some(Redirect::Down)
        );
        assert_eq!(Redirect::parse(b"-ERR MOVED\r\n"), None);
        assert_eq!(Redirect::parse(b"+MOVED 1 a:1\r\n"), None);
        assert_eq!(Redirect::parse(b"-MOVED x y\r\n"), None);
    }
}
