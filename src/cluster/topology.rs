//! Reading a cluster's shape from one node: `CLUSTER SHARDS` (Redis 7),
//! or `CLUSTER SLOTS` from older servers. Both become a `Topology`: per
//! shard, its master, its replicas and the slot ranges it serves.

use crate::config::Addr;
use crate::resp::shapes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub master: Addr,
    pub replicas: Vec<Addr>,
    /// Inclusive ranges.
    pub ranges: Vec<(u16, u16)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub shards: Vec<Shard>,
}

impl Topology {
    /// Slots served by some master.
    pub fn covered(&self) -> usize {
        self.shards
            .iter()
            .flat_map(|s| &s.ranges)
            .map(|&(a, b)| usize::from(b.saturating_sub(a)) + 1)
            .sum()
    }

    /// From a `CLUSTER SHARDS` reply (RESP2: each shard a flat list of
    /// name, value pairs). `None` when the reply is not one.
    pub fn from_shards(reply: &[u8]) -> Option<Topology> {
        let mut shards = Vec::new();
        for shard in shapes::elements(reply)? {
            let fields = pairs(shard)?;
            let mut ranges = Vec::new();
            let slots = fields.iter().find(|(k, _)| k == b"slots")?.1;
            let bounds: Vec<i64> = shapes::elements(slots)?
                .iter()
                .map(|f| shapes::integer(f))
                .collect::<Option<_>>()?;
            for pair in bounds.chunks_exact(2) {
                ranges.push((slot(pair[0])?, slot(pair[1])?));
            }
            let mut master = None;
            let mut replicas = Vec::new();
            for node in shapes::elements(fields.iter().find(|(k, _)| k == b"nodes")?.1)? {
                let node = pairs(node)?;
                let text = |name: &[u8]| {
                    node.iter()
                        .find(|(k, _)| *k == name)
                        .and_then(|(_, v)| shapes::bulk(v))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                let port = node
                    .iter()
                    .find(|(k, _)| k == b"port" || k == b"tls-port")
                    .and_then(|(_, v)| shapes::integer(v))
                    .and_then(|p| u16::try_from(p).ok())?;
                // The endpoint clients are told to use, else the IP.
                let host = text(b"endpoint")
                    .filter(|e| !e.is_empty() && e != "?")
                    .or_else(|| text(b"ip"))?;
                let addr = Addr { host, port };
                let failed = text(b"health").is_some_and(|h| h == "fail");
                match text(b"role").as_deref() {
                    Some("master") if master.is_none() => master = Some(addr),
                    _ if !failed => replicas.push(addr),
                    _ => {}
                }
            }
            // A shard without slots (a new, empty master) serves nothing yet.
            if let (Some(master), false) = (master, ranges.is_empty()) {
                shards.push(Shard {
                    master,
                    replicas,
                    ranges,
                });
            }
        }
        Some(Topology { shards })
    }

    /// From a `CLUSTER SLOTS` reply: one entry per range, master first.
    pub fn from_slots(reply: &[u8]) -> Option<Topology> {
        let mut shards: Vec<Shard> = Vec::new();
        for range in shapes::elements(reply)? {
            let parts = shapes::elements(range)?;
            let (start, end) = (
                slot(shapes::integer(parts.first()?)?)?,
                slot(shapes::integer(parts.get(1)?)?)?,
            );
            let mut nodes = parts[2..].iter().filter_map(|n| {
                let n = shapes::elements(n)?;
                let host = String::from_utf8_lossy(shapes::bulk(n.first()?)?).into_owned();
                let port = u16::try_from(shapes::integer(n.get(1)?)?).ok()?;
                Some(Addr { host, port })
            });
            let master = nodes.next()?;
            let replicas: Vec<Addr> = nodes.collect();
            match shards.iter_mut().find(|s| s.master == master) {
                Some(shard) => shard.ranges.push((start, end)),
                None => shards.push(Shard {
                    master,
                    replicas,
                    ranges: vec![(start, end)],
                }),
            }
        }
        Some(Topology { shards })
    }
}

fn slot(n: i64) -> Option<u16> {
    u16::try_from(n)
        .ok()
        .filter(|&s| usize::from(s) < super::SLOTS)
}

/// A flat list of name, value frames (a RESP2 map) as (name, value) pairs.
fn pairs(frame: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let items = shapes::elements(frame)?;
    Some(
        items
            .chunks_exact(2)
            .filter_map(|kv| Some((shapes::bulk(kv[0])?, kv[1])))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> String {
        format!("${}\r\n{s}\r\n", s.len())
    }

    fn node(port: u16, role: &str, health: &str) -> String {
        let fields = [
            bulk("id"),
            bulk("abc"),
            bulk("port"),
            format!(":{port}\r\n"),
            bulk("ip"),
            bulk("127.0.0.1"),
            bulk("endpoint"),
            bulk("127.0.0.1"),
            bulk("role"),
            bulk(role),
            bulk("replication-offset"),
            ":10\r\n".into(),
            bulk("health"),
            bulk(health),
        ];
        format!("*{}\r\n{}", fields.len(), fields.concat())
    }

    #[test]
    fn reads_cluster_shards() {
        let shard = |ranges: &[(u16, u16)], nodes: &[String]| {
            let slots: String = ranges
                .iter()
                .map(|(a, b)| format!(":{a}\r\n:{b}\r\n"))
                .collect();
            format!(
                "*4\r\n{}*{}\r\n{slots}{}*{}\r\n{}",
                bulk("slots"),
                ranges.len() * 2,
                bulk("nodes"),
                nodes.len(),
                nodes.concat()
            )
        };
        let reply = format!(
            "*3\r\n{}{}{}",
            shard(
                &[(0, 5460)],
                &[
                    node(7001, "master", "online"),
                    node(7004, "replica", "online")
                ]
            ),
            shard(
                &[(5461, 10922), (16000, 16383)],
                &[
                    node(7005, "replica", "fail"),
                    node(7002, "master", "online")
                ]
            ),
            shard(&[], &[node(7009, "master", "online")]),
        );
        let t = Topology::from_shards(reply.as_bytes()).expect("parsed");
        assert_eq!(t.shards.len(), 2, "the shard without slots serves nothing");
        assert_eq!(t.shards[0].master.to_string(), "127.0.0.1:7001");
        assert_eq!(t.shards[0].replicas[0].port, 7004);
        assert_eq!(t.shards[1].master.port, 7002);
        assert!(
            t.shards[1].replicas.is_empty(),
            "a failed replica is left out"
        );
        assert_eq!(t.covered(), 5461 + 5462 + 384);
    }

    #[test]
    fn reads_cluster_slots() {
        let entry = |a: u16, b: u16, ports: &[u16]| {
            let nodes: String = ports
                .iter()
                .map(|p| format!("*3\r\n{}:{p}\r\n{}", bulk("127.0.0.1"), bulk("id")))
                .collect();
            format!("*{}\r\n:{a}\r\n:{b}\r\n{nodes}", 2 + ports.len())
        };
        let reply = format!(
            "*3\r\n{}{}{}",
            entry(0, 100, &[7001, 7004]),
            entry(101, 16383, &[7002]),
            entry(200, 300, &[7001, 7004])
        );
        let t = Topology::from_slots(reply.as_bytes()).expect("parsed");
        assert_eq!(t.shards.len(), 2);
        assert_eq!(t.shards[0].ranges, [(0, 100), (200, 300)]);
        assert!(Topology::from_slots(b"-ERR no cluster\r\n").is_none());
    }

    #[test]
    fn redirect_addresses() {
        assert_eq!(Addr::parse("127.0.0.1:7002").map(|a| a.port), Some(7002));
        assert_eq!(Addr::parse("[::1]:7002").unwrap().host, "::1");
        assert!(Addr::parse("nonsense").is_none());
    }
}
