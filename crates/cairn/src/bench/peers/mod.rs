//! The peers `cairn bench --compare` runs the write workloads against: PostgreSQL
//! ([`postgres`]) and NATS JetStream ([`nats`]), each on a fresh database or stream of its
//! own, removed at the end.
//!
//! Without the `peers` feature [`Peer`] has no variants and [`Peer::connect`] explains how
//! to get one, so the rest of the benchmark needs no feature gates.

#[cfg(feature = "peers")]
mod nats;
#[cfg(feature = "peers")]
mod postgres;

#[cfg(feature = "postgres")]
pub(crate) use postgres::split_addr;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::report::PeerInfo;
use super::{AppendSpec, Measured, PeerKind};

/// A connected peer, with the database or stream it created for the run.
pub(crate) enum Peer {
    /// PostgreSQL.
    #[cfg(feature = "peers")]
    Postgres(postgres::Postgres),
    /// NATS JetStream.
    #[cfg(feature = "peers")]
    Nats(nats::Nats),
}

impl Peer {
    /// Connects to the peer and creates what the run writes to.
    ///
    /// # Errors
    ///
    /// The peer is unreachable (the error names the service and its address) or refused
    /// the setup; without the `peers` feature, always.
    #[cfg(feature = "peers")]
    pub(crate) async fn connect(
        kind: PeerKind,
        postgres_addr: &str,
        nats_addr: &str,
    ) -> anyhow::Result<Self> {
        Ok(match kind {
            PeerKind::Postgres => Self::Postgres(postgres::Postgres::connect(postgres_addr).await?),
            PeerKind::Nats => Self::Nats(nats::Nats::connect(nats_addr).await?),
        })
    }

    /// Without the `peers` feature there is nothing to connect to.
    #[cfg(not(feature = "peers"))]
    pub(crate) async fn connect(
        kind: PeerKind,
        _postgres_addr: &str,
        _nats_addr: &str,
    ) -> anyhow::Result<Self> {
        let name = match kind {
            PeerKind::Postgres => "postgres",
            PeerKind::Nats => "nats",
        };
        Err(crate::cli::UsageError(format!(
            "this cairn was built without the `peers` feature, so it cannot compare with \
             {name}: build it with `cargo build --release --features peers`"
        ))
        .into())
    }

    /// What the peer is, for the report.
    pub(crate) fn info(&self) -> PeerInfo {
        match *self {
            #[cfg(feature = "peers")]
            Self::Postgres(ref peer) => peer.info(),
            #[cfg(feature = "peers")]
            Self::Nats(ref peer) => peer.info(),
        }
    }

    /// Runs a write workload of the given shape against the peer.
    ///
    /// # Errors
    ///
    /// The peer failed during the workload.
    pub(crate) async fn append(
        &self,
        workload: &str,
        spec: &AppendSpec,
        counter: &Arc<AtomicU64>,
    ) -> anyhow::Result<Measured> {
        let _ = (workload, spec, counter);
        match *self {
            #[cfg(feature = "peers")]
            Self::Postgres(ref peer) => peer.append(spec, counter).await,
            #[cfg(feature = "peers")]
            Self::Nats(ref peer) => peer.append(workload, spec, counter).await,
        }
    }

    /// Removes what the run created and disconnects.
    ///
    /// # Errors
    ///
    /// The removal failed (the error says what is left behind).
    pub(crate) async fn cleanup(self) -> anyhow::Result<()> {
        match self {
            #[cfg(feature = "peers")]
            Self::Postgres(peer) => peer.cleanup().await,
            #[cfg(feature = "peers")]
            Self::Nats(peer) => peer.cleanup().await,
        }
    }
}
