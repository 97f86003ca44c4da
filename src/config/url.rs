//! Backend addresses as applications write them:
//! `redis://[user:pass@]host:port[/db]`, or a Sentinel-managed master:
//! `redis+sentinel://[user:pass@]h1:26379,h2:26380,h3:26381/master[/db]`,
//! or a Redis Cluster by its seed nodes: `redis+cluster://[user:pass@]h1:p1,h2:p2`
//! (`rediss+cluster://` with TLS).
//! `rediss://` is recognised and refused until TLS support lands, so a URL
//! never silently means something else.

use std::fmt;

use super::Addr;

#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `None` until known: a Sentinel master not discovered yet, a replica
    /// pool with no healthy replica chosen.
    pub addr: Option<Addr>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// Set for `rediss://`: TLS with server verification.
    pub tls: Option<BackendTls>,
    /// A cluster replica read from: `READONLY` after the handshake.
    pub readonly: bool,
}

/// How a `rediss://` backend is verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendTls {
    /// PEM CA certificates to trust; the public web roots when unset.
    pub ca_file: Option<String>,
    /// The name to verify (and send as SNI); the URL's host when unset.
    pub server_name: Option<String>,
    /// The client configuration built from these settings, once per pool
    /// configuration (the CA file is read again only after a reload).
    pub client: crate::tls::ClientConfigCell,
}

impl Endpoint {
    /// The address for logs and reports: `host:port`, or `(unresolved)`.
    pub fn address(&self) -> String {
        match &self.addr {
            Some(addr) => addr.to_string(),
            None => "(unresolved)".to_string(),
        }
    }
}

/// Shown in `--check`, logs and INFO: never the password.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            if self.tls.is_some() {
                "rediss://"
            } else {
                "redis://"
            }
        )?;
        match (&self.username, &self.password) {
            (Some(u), Some(_)) => write!(f, "{u}:***@")?,
            (None, Some(_)) => write!(f, ":***@")?,
            (Some(u), None) => write!(f, "{u}@")?,
            (None, None) => {}
        }
        write!(f, "{}/{}", self.address(), self.db)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A master found through Sentinel: its name and the sentinels to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelSpec {
    pub master: String,
    pub sentinels: Vec<Addr>,
}

/// What a pool URL names: a fixed address, or a Sentinel master whose
/// address is discovered (the endpoint then carries credentials and db).
#[derive(Clone, Debug)]
pub struct BackendUrl {
    pub endpoint: Endpoint,
    pub sentinel: Option<SentinelSpec>,
    /// A Redis Cluster's seed nodes (any one reachable is enough); the
    /// endpoint then carries the credentials and TLS, and a seed's address.
    pub cluster: Option<Vec<Addr>>,
}

/// `redis+cluster://[user:pass@]h1:p1,h2:p2[,...]`, or `rediss+cluster://`.
fn parse_cluster_url(url: &str, rest: &str, scheme: &str) -> Result<BackendUrl, String> {
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(path.trim_end_matches('/'), "" | "0") {
        return Err(format!(
            "'{url}': a Redis Cluster has only database 0 (no /{path})"
        ));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut seeds = Vec::new();
    for hostport in hosts.split(',').filter(|h| !h.is_empty()) {
        seeds.push(split_host_port(hostport, 6379)?);
    }
    let Some(first) = seeds.first().cloned() else {
        return Err(format!(
            "'{url}' names no node: {scheme}host:port[,host:port...]"
        ));
    };
    let plain = if scheme.starts_with("rediss") {
        "rediss://"
    } else {
        "redis://"
    };
    let node = match userinfo {
        Some(u) => format!("{plain}{u}@seed:1"),
        None => format!("{plain}seed:1"),
    };
    let mut endpoint = parse_url(&node)?;
    endpoint.addr = Some(first);
    Ok(BackendUrl {
        endpoint,
        sentinel: None,
        cluster: Some(seeds),
    })
}

pub fn parse_backend_url(url: &str) -> Result<BackendUrl, String> {
    for scheme in ["redis+cluster://", "rediss+cluster://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return parse_cluster_url(url, rest, scheme);
        }
    }
    let Some(rest) = url.strip_prefix("redis+sentinel://") else {
        return parse_url(url).map(|endpoint| BackendUrl {
            endpoint,
            sentinel: None,
            cluster: None,
        });
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| {
        format!(
            "'{url}' names no master: redis+sentinel://host:port[,host:port...]/master-name[/db]"
        )
    })?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut sentinels = Vec::new();
    for hostport in hosts.split(',').filter(|h| !h.is_empty()) {
        sentinels.push(split_host_port(hostport, 26379)?);
    }
    if sentinels.is_empty() {
        return Err(format!("'{url}' names no sentinel"));
    }
    let mut parts = path.trim_end_matches('/').splitn(2, '/');
    let master = parts.next().unwrap_or_default().to_string();
    if master.is_empty() {
        return Err(format!("'{url}' names no master"));
    }
    // The credentials and db are the data node's: reuse the plain parser.
    let node = match (userinfo, parts.next()) {
        (Some(u), Some(db)) => format!("redis://{u}@unresolved:1/{db}"),
        (Some(u), None) => format!("redis://{u}@unresolved:1"),
        (None, Some(db)) => format!("redis://unresolved:1/{db}"),
        (None, None) => "redis://unresolved:1".to_string(),
    };
    let mut endpoint = parse_url(&node)?;
    endpoint.addr = None;
    Ok(BackendUrl {
        endpoint,
        sentinel: Some(SentinelSpec { master, sentinels }),
        cluster: None,
    })
}

pub fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("redis://") {
        (rest, None)
    } else if let Some(rest) = url.strip_prefix("rediss://") {
        (rest, Some(BackendTls::default()))
    } else {
        return Err(format!(
            "'{url}' is not a redis://[user:pass@]host:port[/db] URL"
        ));
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                non_empty(percent_decode(user)?),
                Some(percent_decode(pass)?),
            ),
            None => (non_empty(percent_decode(u)?), None),
        },
    };
    let addr = split_host_port(hostport, 6379)?;
    let db = match path.trim_end_matches('/') {
        "" => 0,
        d => d
            .parse()
            .map_err(|_| format!("database '{d}' in '{url}' is not a number"))?,
    };
    Ok(Endpoint {
        addr: Some(addr),
        username,
        password,
        db,
        tls,
        readonly: false,
    })
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<Addr, String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad IPv6 address '{hostport}'"))?;
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (hostport, ""),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in '{hostport}'"));
    }
    let port = if port.is_empty() {
        default_port
    } else {
        port.parse()
            .map_err(|_| format!("bad port '{port}' in '{hostport}'"))?
    };
    if port == 0 {
        return Err(format!("bad port 0 in '{hostport}'"));
    }
    Ok(Addr::new(host, port))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "bad %-escape in URL credentials".to_string())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "URL credentials are not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_forms() {
        let e = parse_url("redis://127.0.0.1:6380").unwrap();
        assert_eq!(e.addr, Some(Addr::new("127.0.0.1", 6380)));
        assert_eq!(e.db, 0);
        let e = parse_url("redis://app:p%40ss@redis-session:6379/2").unwrap();
        assert_eq!(e.username.as_deref(), Some("app"));
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        assert_eq!(e.db, 2);
        assert_eq!(e.to_string(), "redis://app:***@redis-session:6379/2");
        let e = parse_url("redis://:secret@[::1]:7000").unwrap();
        assert_eq!(
            (e.username, e.password.as_deref(), e.addr),
            (None, Some("secret"), Some(Addr::new("::1", 7000)))
        );
    }

    #[test]
    fn sentinel_urls() {
        let u =
            parse_backend_url("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380,h3/session/2")
                .unwrap();
        let s = u.sentinel.unwrap();
        assert_eq!(s.master, "session");
        assert_eq!(
            s.sentinels,
            [
                Addr::new("127.0.0.1", 26379),
                Addr::new("127.0.0.1", 26380),
                Addr::new("h3", 26379)
            ]
        );
        assert_eq!(
            (u.endpoint.password.as_deref(), u.endpoint.db),
            (Some("pw"), 2)
        );
        assert_eq!(
            u.endpoint.addr, None,
            "the master is discovered, not configured"
        );
        assert!(parse_backend_url("redis+sentinel://h1:1").is_err());
        assert!(parse_backend_url("redis+sentinel://h1:1/").is_err());
        assert!(parse_backend_url("redis://h:1").unwrap().sentinel.is_none());
    }

    #[test]
    fn cluster_urls() {
        let u = parse_backend_url("redis+cluster://app:pw@10.0.0.1:7000,10.0.0.2:7001,h3").unwrap();
        assert_eq!(
            u.cluster.unwrap(),
            [
                Addr::new("10.0.0.1", 7000),
                Addr::new("10.0.0.2", 7001),
                Addr::new("h3", 6379)
            ]
        );
        assert_eq!(u.endpoint.password.as_deref(), Some("pw"));
        assert_eq!(u.endpoint.address(), "10.0.0.1:7000");
        assert!(u.endpoint.tls.is_none());
        let tls = parse_backend_url("rediss+cluster://h:7000").unwrap();
        assert!(tls.endpoint.tls.is_some() && tls.cluster.is_some());
        assert!(parse_backend_url("redis+cluster://h:7000/2").is_err());
        assert!(parse_backend_url("redis+cluster://").is_err());
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("redis://host:99999").is_err());
        assert!(parse_url("redis://:6379").is_err());
        assert!(parse_url("redis://h:1/x").is_err());
        assert!(parse_url("rediss://h:1").unwrap().tls.is_some());
    }
}
