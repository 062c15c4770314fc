//! What the integration tests share: the broker's address, a [`Rabbit`] factory for the
//! transport suite (connections through a severable proxy, names under a test namespace,
//! and everything a test created deleted when it ends, passed or failed).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_amqp::{AmqpOptions, AmqpTransport};
use cairn_bus::TransportError;
use cairn_conformance::transport::TransportFactory;
use cairn_conformance::transport::proxy::TcpProxy;

/// The namespace of every exchange and queue the tests create.
pub const NAMESPACE: &str = "cairn-test";

/// The RabbitMQ under test: `CAIRN_AMQP_ADDR` or `127.0.0.1:5672`, user guest/guest.
pub fn broker_addr() -> SocketAddr {
    std::env::var("CAIRN_AMQP_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:5672".to_owned())
        .parse()
        .expect("CAIRN_AMQP_ADDR is host:port")
}

/// The URL of the broker (or of a proxy in front of it) at `addr`.
pub fn url(addr: SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// The options the tests connect with.
pub fn options() -> AmqpOptions {
    AmqpOptions::default().namespace(NAMESPACE)
}

/// A fresh name, as the suite's factories make them.
pub fn unique(purpose: &str) -> String {
    format!("{purpose}-{}", uuid::Uuid::now_v7().simple())
}

/// Names a test created, deleted by [`Cleanup`]'s drop.
#[derive(Debug, Default, Clone)]
pub struct Cleanup {
    names: Arc<Mutex<Names>>,
}

#[derive(Debug, Default)]
struct Names {
    topics: Vec<String>,
    groups: Vec<String>,
}

impl Cleanup {
    /// Records a topic name.
    pub fn topic(&self, name: String) -> String {
        self.lock().topics.push(name.clone());
        name
    }

    /// Records a group name.
    pub fn group(&self, name: String) -> String {
        self.lock().groups.push(name.clone());
        name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if Arc::strong_count(&self.names) > 1 {
            return;
        }
        let Names { topics, groups } = std::mem::take(&mut *self.lock());
        if topics.is_empty() {
            return;
        }
        // On a thread of its own with its own runtime: this may run inside (or while
        // unwinding out of) the test's runtime, which cannot be blocked on.
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let transport = AmqpTransport::connect_with(&url(broker_addr()), options()).await?;
                for topic in &topics {
                    for group in &groups {
                        transport.delete_group(topic, group).await?;
                    }
                    transport.delete_topic(topic).await?;
                }
                transport.close().await;
                anyhow::Ok(())
            })
        })
        .join();
        match cleaned {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("cleaning up the test's queues failed: {error:#}"),
            Err(_) => eprintln!("cleaning up the test's queues panicked"),
        }
    }
}

/// The transport suite's factory: connections through a [`TcpProxy`] to the broker,
/// started on the first connection (inside the test's runtime).
#[derive(Default)]
pub struct Rabbit {
    proxy: tokio::sync::OnceCell<TcpProxy>,
    cleanup: Cleanup,
}

impl Rabbit {
    /// A factory; nothing is opened yet.
    pub fn new() -> Self {
        Self::default()
    }

    async fn proxy(&self) -> Result<&TcpProxy, TransportError> {
        self.proxy
            .get_or_try_init(|| TcpProxy::start(broker_addr()))
            .await
            .map_err(|error| TransportError::Unreachable {
                endpoint: "the test proxy".to_owned(),
                source: Box::new(error),
            })
    }
}

impl TransportFactory for Rabbit {
    type Connection = AmqpTransport;

    async fn connect(&self) -> Result<AmqpTransport, TransportError> {
        let proxy = self.proxy().await?;
        AmqpTransport::connect_with(&url(proxy.addr()), options()).await
    }

    fn unique_name(&self, purpose: &str) -> String {
        let name = unique(purpose);
        if purpose.starts_with("topic") {
            self.cleanup.topic(name)
        } else {
            self.cleanup.group(name)
        }
    }

    async fn disrupt(&self) -> bool {
        match self.proxy.get() {
            Some(proxy) => {
                proxy.sever();
                true
            }
            None => false,
        }
    }
}
