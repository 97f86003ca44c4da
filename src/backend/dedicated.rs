//! A connection leased to one client for state that cannot be shared:
//! a transaction with WATCH, a blocking command, subscriptions. Leases are
//! bounded per pool; a clean connection goes back to the idle list, any
//! other is closed (dropping it closes the socket, which ends its state).

use super::stream::BackendStream;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::resp::{FrameScanner, Protocol};

/// A lease's place in its pool's limits: one of `max_dedicated`, and for a
/// held lease one of those clients may keep.
#[derive(Debug)]
pub(super) struct LeasePermit {
    pub(super) _lease: OwnedSemaphorePermit,
    pub(super) _held: Option<OwnedSemaphorePermit>,
    /// For a held lease of a user held to its share: its place there.
    pub(super) _tenant: Option<super::tenants::TenantPermit>,
}

pub struct Dedicated {
    stream: BackendStream,
    buf: BytesMut,
    scanner: FrameScanner,
    /// Where it is connected (what a failover compares on its way back).
    pub(super) addr: Option<crate::config::Addr>,
    pub(super) db: u32,
    pub(super) proto: Protocol,
    /// The connection's own `CLIENT ID` on the server, once asked: what
    /// `CLIENT UNBLOCK` names to end a blocking command without losing
    /// its reply.
    pub backend_id: Option<i64>,
    /// `None` for connections outside any pool (sentinel watchers).
    pub(super) _permit: Option<LeasePermit>,
}

impl Dedicated {
    pub(super) fn new(
        stream: BackendStream,
        addr: Option<crate::config::Addr>,
        db: u32,
        proto: Protocol,
        permit: LeasePermit,
    ) -> Dedicated {
        Dedicated {
            stream,
            addr,
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: FrameScanner::default(),
            db,
            proto,
            backend_id: None,
            _permit: Some(permit),
        }
    }

    /// A connection of its own to `endpoint`, authenticated, outside any
    /// pool's lease limit (sentinel subscriptions).
    pub async fn connect(
        endpoint: &crate::config::Endpoint,
        timeout: std::time::Duration,
    ) -> Result<Dedicated, String> {
        let open = super::stream::open(endpoint, 0, Protocol::Resp2);
        let stream = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| format!("connect to {} timed out", endpoint.address()))??;
        Ok(Dedicated {
            stream,
            buf: BytesMut::with_capacity(4096),
            scanner: FrameScanner::default(),
            addr: endpoint.addr.clone(),
            db: 0,
            proto: Protocol::Resp2,
            backend_id: None,
            _permit: None,
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next reply frame. Cancel-safe: bytes read and the scan position
    /// stay in `self`, so a caller may race it against other events.
    pub async fn read_frame(&mut self) -> std::io::Result<Bytes> {
        self.read_frame_piece(usize::MAX)
            .await
            .map(|(frame, _)| frame)
    }

    /// The next frame whole (`true`) when it arrives before `piece` bytes
    /// of it are walked; else those bytes (`false`), whole elements of it,
    /// and the rest in later calls: a reply too large to hold (EXEC's array
    /// of many large values) passes through in pieces. Cancel-safe as
    /// `read_frame`.
    pub async fn read_frame_piece(&mut self, piece: usize) -> std::io::Result<(Bytes, bool)> {
        loop {
            match self.scanner.next_frame(&self.buf) {
                Ok(Some(n)) => return Ok((self.buf.split_to(n).freeze(), true)),
                Ok(None) if self.scanner.walked() >= piece => {
                    let walked = self.scanner.walked();
                    self.scanner.consumed(walked);
                    return Ok((self.buf.split_to(walked).freeze(), false));
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Brings the connection to the client's database and protocol when
    /// the client switched (SELECT, HELLO) while holding it, after WATCH:
    /// the lease was taken with the old ones. Filed under the new ones when
    /// it goes back. Err with the server's refusal.
    pub async fn follow_client(
        &mut self,
        db: u32,
        proto: Protocol,
    ) -> std::io::Result<Result<(), Bytes>> {
        let mut bytes = Vec::new();
        let mut owed = 0;
        if db != self.db {
            let n = db.to_string();
            bytes.extend_from_slice(
                format!("*2\r\n$6\r\nSELECT\r\n${}\r\n{n}\r\n", n.len()).as_bytes(),
            );
            owed += 1;
        }
        if proto != self.proto {
            let v = if proto == Protocol::Resp3 { b'3' } else { b'2' };
            bytes.extend_from_slice(b"*2\r\n$5\r\nHELLO\r\n$1\r\n");
            bytes.extend_from_slice(&[v, b'\r', b'\n']);
            owed += 1;
        }
        if owed == 0 {
            return Ok(Ok(()));
        }
        self.send(&bytes).await?;
        let mut refused = None;
        for _ in 0..owed {
            let frame = self.read_frame().await?;
            if frame.first() == Some(&b'-') && refused.is_none() {
                refused = Some(frame);
            }
        }
        if let Some(refused) = refused {
            return Ok(Err(refused));
        }
        self.db = db;
        self.proto = proto;
        Ok(Ok(()))
    }

    /// True when no reply bytes are pending: safe to hand to someone else.
    pub(super) fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}
