//! What the test binaries share: the shared server's address, options with a namespace of
//! their own, a guard that deletes a run's streams (and leftovers of runs that died more
//! than an hour ago), and a private `nats-server` child for the tests that stop a server
//! or need authentication.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use cairn_nats::NatsOptions;
use futures::StreamExt;
use uuid::Uuid;

/// The prefix of every namespace the tests use.
pub(crate) const PREFIX: &str = "cairntest_";

/// The shared server (`CAIRN_NATS_ADDR`, default `127.0.0.1:4222`).
pub(crate) fn shared_addr() -> SocketAddr {
    std::env::var("CAIRN_NATS_ADDR")
        .ok()
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 4222)))
}

/// A namespace no other run uses: the prefix and a fresh UUID v7.
pub(crate) fn fresh_namespace() -> String {
    format!("{PREFIX}{}", Uuid::now_v7().simple())
}

/// Options for tests: the namespace, and deadlines short enough that a dead consumer's
/// deliveries come back within the conformance suite's patience.
pub(crate) fn test_options(namespace: &str) -> NatsOptions {
    NatsOptions::default()
        .namespace(namespace)
        .ack_wait(Duration::from_secs(4))
        .request_timeout(Duration::from_secs(3))
        .pull_expiry(Duration::from_secs(5))
        .max_reconnect_delay(Duration::from_millis(500))
}

/// Deletes the streams of `namespace` on the server at `addr`, and those of test
/// namespaces older than an hour (left by runs that were killed).
pub(crate) async fn delete_streams(addr: SocketAddr, namespace: &str) {
    let Ok(client) = async_nats::connect(format!("nats://{addr}")).await else {
        return;
    };
    let context = jetstream::new(client.clone());
    let mut names = context.stream_names();
    let mut doomed = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if name.starts_with(&format!("{namespace}-")) || stale(&name) {
            doomed.push(name);
        }
    }
    for name in doomed {
        let _ = context.delete_stream(&name).await;
    }
    let _ = client.drain().await;
}

/// Whether `stream` belongs to a test namespace created more than an hour ago.
fn stale(stream: &str) -> bool {
    let Some(id) = stream
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.get(..32))
        .and_then(|hex| Uuid::parse_str(hex).ok())
    else {
        return false;
    };
    let Some((seconds, _)) = id.get_timestamp().map(|ts| ts.to_unix()) else {
        return false;
    };
    let created = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
    created
        .elapsed()
        .is_ok_and(|age| age > Duration::from_secs(3_600))
}

/// Deletes a namespace's streams when dropped, even when the test failed: from a thread
/// of its own, so it works inside or outside a runtime.
pub(crate) struct Cleanup {
    pub(crate) addr: SocketAddr,
    pub(crate) namespace: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (addr, namespace) = (self.addr, self.namespace.clone());
        let cleaner = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(20),
                        delete_streams(addr, &namespace),
                    )
                    .await;
                });
            }
        });
        let _ = cleaner.join();
    }
}

/// A `nats-server` child process with JetStream and a store directory of its own, on a
/// port of its own. Dropping it kills the process and removes the directory.
pub(crate) struct PrivateServer {
    pub(crate) port: u16,
    pub(crate) store: PathBuf,
    auth: Option<(String, String)>,
    child: Option<Child>,
}

/// The server binary (`NATS_SERVER`, default `nats-server` on the path or in /usr/sbin).
fn server_binary() -> String {
    std::env::var("NATS_SERVER").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server".to_owned()
        } else {
            "nats-server".to_owned()
        }
    })
}

impl PrivateServer {
    /// Starts a server on a free loopback port; with `auth`, clients must present that
    /// user and password.
    pub(crate) async fn start(auth: Option<(&str, &str)>) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("its address").port()
        };
        let store = std::env::temp_dir().join(format!("cairn-nats-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&store).expect("a store directory");
        let mut server = Self {
            port,
            store,
            auth: auth.map(|(user, pass)| (user.to_owned(), pass.to_owned())),
            child: None,
        };
        server.launch().await;
        server
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the process (again) on the same port and store, and waits until it accepts
    /// connections.
    pub(crate) async fn launch(&mut self) {
        let mut command = Command::new(server_binary());
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((user, pass)) = &self.auth {
            command.args(["--user", user, "--pass", pass]);
        }
        self.child = Some(command.spawn().expect("nats-server starts"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen on {} within 15 s",
                self.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the process with SIGTERM (a clean stop) and waits for it to exit (killing it
    /// after 15 s).
    pub(crate) async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while matches!(child.try_wait(), Ok(None)) {
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
