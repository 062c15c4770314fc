//! [`TcpProxy`]: a loopback TCP proxy in front of a real broker, so that a transport's
//! suite can drop every client connection on demand ([`TransportFactory::disrupt`]) the
//! way a network failure would, while the broker itself keeps running.
//!
//! Clients connect to [`TcpProxy::addr`]; each connection is relayed to the broker by a
//! task of its own. [`TcpProxy::sever`] ends every relayed connection at once (both
//! sockets close); the proxy keeps accepting, so clients that reconnect get through.
//!
//! [`TransportFactory::disrupt`]: super::TransportFactory::disrupt

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP proxy on `127.0.0.1:<ephemeral>` relaying to one upstream address. Dropping it
/// stops it and ends every connection through it.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    /// The relaying tasks of the live connections; written by the accept loop and
    /// [`sever`](Self::sever).
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl TcpProxy {
    /// Starts a proxy to `upstream`, on a runtime that outlives it.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let live = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let relay = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                let mut live = live.lock().unwrap_or_else(PoisonError::into_inner);
                live.retain(|handle| !handle.is_finished());
                live.push(relay.abort_handle());
            }
        })
        .abort_handle();
        Ok(Self {
            addr,
            upstream,
            connections,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker behind it.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Ends every connection through the proxy; returns how many were live.
    pub fn sever(&self) -> usize {
        let mut live = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut severed = 0;
        for handle in live.drain(..) {
            if !handle.is_finished() {
                severed += 1;
            }
            handle.abort();
        }
        severed
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.sever();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_severs_live_connections() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = upstream.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        let proxy = TcpProxy::start(upstream_addr).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");

        assert_eq!(proxy.sever(), 1);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await
        .expect("the severed connection closes");
        assert!(read.is_err() || rest.is_empty());

        // New connections still get through.
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"pong");
    }
}
