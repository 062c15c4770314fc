//! The transport conformance suite against the NATS server on this machine, through a
//! loopback proxy that `disrupt()` uses to drop every client connection at once. Each case
//! gets a namespace of its own; its streams are deleted when the case ends, pass or fail.

mod support;

use cairn_bus::TransportError;
use cairn_conformance::transport::TransportFactory;
use cairn_conformance::transport::proxy::TcpProxy;
use cairn_nats::NatsTransport;
use tokio::sync::OnceCell;

use support::{Cleanup, fresh_namespace, shared_addr, test_options};

/// Connections to the shared server through a proxy of the case's own.
struct Nats {
    proxy: OnceCell<TcpProxy>,
    namespace: String,
    _cleanup: Cleanup,
}

impl Nats {
    fn new() -> Self {
        let namespace = fresh_namespace();
        Self {
            proxy: OnceCell::new(),
            _cleanup: Cleanup {
                addr: shared_addr(),
                namespace: namespace.clone(),
            },
            namespace,
        }
    }

    async fn proxy(&self) -> Result<&TcpProxy, TransportError> {
        self.proxy
            .get_or_try_init(|| TcpProxy::start(shared_addr()))
            .await
            .map_err(|cause| TransportError::Unreachable {
                endpoint: "a loopback proxy".to_owned(),
                source: Box::new(cause),
            })
    }
}

impl TransportFactory for Nats {
    type Connection = NatsTransport;

    async fn connect(&self) -> Result<NatsTransport, TransportError> {
        let proxy = self.proxy().await?;
        NatsTransport::connect_with(
            &format!("nats://{}", proxy.addr()),
            test_options(&self.namespace),
        )
        .await
    }

    async fn disrupt(&self) -> bool {
        if let Some(proxy) = self.proxy.get() {
            proxy.sever();
        }
        true
    }
}

cairn_conformance::transport_suite!(Nats::new());
