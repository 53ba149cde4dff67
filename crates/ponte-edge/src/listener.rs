//! A listener that hands out connections whose TLS handshake is complete and whose client
//! certificate (if any) is already read into a principal, or plaintext connections when the
//! listener is configured `insecure = true`.
//!
//! Handshakes run concurrently, each with a deadline, so a client that connects and sends
//! nothing (or sends a handshake byte by byte) holds one task for at most the deadline and
//! never delays anyone else. A handshake that fails (no certificate where one is required, a
//! certificate from another CA, a deadline passed) is counted in
//! `ponte_listener_handshake_failures_total{listener,reason}` and logged at debug.
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ponte_access::tls::{Alpn, Principal, TlsConfig, principal_from_peer, server_config_with_alpn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::EdgeError;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The principal the verified client certificate names; `None` without one (or plaintext).
    pub certificate: Option<Principal>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// One accepted connection, TLS handshake done.
pub struct Conn {
    io: Io,
    peer: PeerInfo,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.peer).finish()
    }
}

impl Conn {
    /// What is known about the peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// A bound listener: TLS (the default) or plaintext (`insecure = true`).
pub struct EdgeListener {
    name: &'static str,
    tcp: TcpListener,
    acceptor: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for EdgeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeListener")
            .field("name", &self.name)
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.acceptor.is_some())
            .finish()
    }
}

impl EdgeListener {
    /// Binds `addr` for the listener `name` (a metric label: `education`, `grpc`, …), offering
    /// `alpn` over TLS. An insecure configuration logs a warning and sets
    /// `ponte_listener_insecure{listener}` to 1; a TLS one sets it to 0.
    pub async fn bind(
        name: &'static str,
        addr: &str,
        tls: &TlsConfig,
        alpn: &[Alpn],
        handshake_timeout: Duration,
    ) -> Result<EdgeListener, EdgeError> {
        let acceptor = if tls.is_insecure() {
            None
        } else {
            Some(TlsAcceptor::from(server_config_with_alpn(tls, alpn)?))
        };
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| EdgeError::Bind {
                addr: addr.to_owned(),
                source,
            })?;
        let insecure = acceptor.is_none();
        metrics::gauge!("ponte_listener_insecure", "listener" => name).set(if insecure {
            1.0
        } else {
            0.0
        });
        if insecure {
            tracing::warn!(
                listener = name,
                addr,
                "listener is PLAINTEXT (tls.insecure = true): anything sent to it, records and \
                 credentials, crosses the network unencrypted and no client certificate is \
                 checked; never run it so outside a single machine"
            );
        }
        Ok(EdgeListener {
            name,
            tcp,
            acceptor,
            handshake_timeout,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.acceptor.is_some()
    }

    /// The connections, handshakes completed, until `shutdown` is cancelled.
    pub fn incoming(self, shutdown: CancellationToken) -> ReceiverStream<io::Result<Conn>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    accepted = self.tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little, go on.
                            tracing::warn!(listener = self.name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                let acceptor = self.acceptor.clone();
                let (name, deadline) = (self.name, self.handshake_timeout);
                tokio::spawn(async move {
                    if let Some(conn) = handshake(name, tcp, remote, acceptor, deadline).await {
                        let _ = tx.send(Ok(conn)).await;
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn handshake_failed(listener: &'static str, reason: &'static str, remote: SocketAddr, why: &str) {
    metrics::counter!("ponte_listener_handshake_failures_total", "listener" => listener, "reason" => reason)
        .increment(1);
    tracing::debug!(listener, %remote, reason, error = why, "TLS handshake failed");
}

async fn handshake(
    name: &'static str,
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    deadline: Duration,
) -> Option<Conn> {
    let Some(acceptor) = acceptor else {
        return Some(Conn {
            io: Io::Plain(tcp),
            peer: PeerInfo {
                remote,
                certificate: None,
                tls: false,
            },
        });
    };
    let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            handshake_failed(name, "refused", remote, &e.to_string());
            return None;
        }
        Err(_) => {
            handshake_failed(name, "timeout", remote, "no handshake within the deadline");
            return None;
        }
    };
    let certificate = match principal_from_peer(tls.get_ref().1.peer_certificates()) {
        Ok(p) => p,
        Err(e) => {
            // Chains to our CA but names nobody: as good as no certificate is not good enough.
            handshake_failed(name, "no_principal", remote, &e.to_string());
            return None;
        }
    };
    Some(Conn {
        io: Io::Tls(Box::new(tls)),
        peer: PeerInfo {
            remote,
            certificate,
            tls: true,
        },
    })
}
