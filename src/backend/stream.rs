//! A connection to a backend, plain TCP or TLS (`rediss://`), verified
//! against the pool's CA file (or the public web roots) and server name.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::config::{BackendTls, Endpoint};
use crate::resp::Protocol;

pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The one way keyway opens a backend connection: TCP (TLS for
/// `rediss://`), then the handshake (AUTH/HELLO, SELECT, CLIENT SETNAME)
/// for `db` and `proto`.
pub async fn open(endpoint: &Endpoint, db: u32, proto: Protocol) -> Result<BackendStream, String> {
    let mut stream = connect(endpoint).await?;
    super::conn::handshake(&mut stream, endpoint, db, proto).await?;
    Ok(stream)
}

/// Opens a connection to `endpoint`, with TLS when its URL was `rediss://`.
async fn connect(endpoint: &Endpoint) -> Result<BackendStream, String> {
    let Some(addr) = &endpoint.addr else {
        return Err("no address known yet".to_string());
    };
    let tcp = TcpStream::connect((addr.host.as_str(), addr.port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let Some(tls) = &endpoint.tls else {
        return Ok(BackendStream::Plain(tcp));
    };
    let connector = TlsConnector::from(tls.client.get_or_build(|| client_config(tls))?);
    let name = tls.server_name.clone().unwrap_or_else(|| addr.host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| format!("'{name}' is not a valid TLS server name"))?;
    let stream = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    Ok(BackendStream::Tls(Box::new(stream)))
}

fn client_config(tls: &BackendTls) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let file =
                std::fs::File::open(path).map_err(|e| format!("cannot read CA '{path}': {e}"))?;
            for cert in rustls_pemfile::certs(&mut io::BufReader::new(file)) {
                let cert = cert.map_err(|e| format!("CA '{path}': {e}"))?;
                roots.add(cert).map_err(|e| format!("CA '{path}': {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl AsyncRead for BackendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading half of a backend connection. A plain TCP stream splits
/// into owned halves that share nothing; TLS keeps one session, so its
/// halves take turns through tokio's lock.
pub type BackendReader = Either<OwnedReadHalf, ReadHalf<BackendStream>>;

/// The writing half of a backend connection (see `BackendReader`).
/// Dropped, it leaves the connection open for the reader: a retiring
/// connection's writer ends first, and a half-close would make Redis drop
/// the replies still owed (an owned TCP half shuts its side down when
/// dropped, unless forgotten).
pub struct BackendWriter(Option<Either<OwnedWriteHalf, WriteHalf<BackendStream>>>);

impl Drop for BackendWriter {
    fn drop(&mut self) {
        if let Some(Either::Left(half)) = self.0.take() {
            // Closed once the reading half is dropped too.
            half.forget();
        }
    }
}

impl BackendStream {
    /// Halves for a reader task and a writer task.
    pub fn into_split(self) -> (BackendReader, BackendWriter) {
        let (rd, wr) = match self {
            BackendStream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (Either::Left(rd), Either::Left(wr))
            }
            tls => {
                let (rd, wr) = tokio::io::split(tls);
                (Either::Right(rd), Either::Right(wr))
            }
        };
        (rd, BackendWriter(Some(wr)))
    }
}

impl BackendWriter {
    /// The half, present until the writer is dropped.
    fn half(&mut self) -> io::Result<Pin<&mut Either<OwnedWriteHalf, WriteHalf<BackendStream>>>> {
        self.0
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "backend connection closed"))
    }
}

impl AsyncWrite for BackendWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().half() {
            Ok(half) => half.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().half() {
            Ok(half) => half.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().half() {
            Ok(half) => half.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
