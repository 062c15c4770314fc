//! What the test binaries share: the URL of the shared server, a transport-suite factory
//! that reaches it through a proxy under a key prefix of its own (and deletes its keys when
//! dropped), and private `redis-server` processes for the tests that must stop a server or
//! need a password.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_bus::TransportError;
use cairn_conformance::transport::TransportFactory;
use cairn_conformance::transport::proxy::TcpProxy;
use cairn_redis::{RedisOptions, RedisTransport};
use tokio::sync::OnceCell;

/// The shared server the suites run against.
pub const SHARED: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 6379);

/// What every test key starts with, followed by the run's start in Unix seconds.
const TEST_PREFIX: &str = "cairn-redis-test-";

/// Keys of runs older than this are deleted by later runs.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// Options for tests: deliveries of dead consumers come back within seconds.
pub fn test_options(prefix: &str) -> RedisOptions {
    RedisOptions::default()
        .prefix(prefix)
        .claim_idle(Duration::from_secs(2))
        .block(Duration::from_millis(500))
}

/// A prefix no other run uses, with the time in it so that leftovers can be aged.
pub fn unique_prefix() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{TEST_PREFIX}{secs}-{}", uuid::Uuid::now_v7().simple())
}

/// Deletes every key of `server` matching `pattern` for which `doomed` says so.
fn delete_keys(server: SocketAddr, pattern: &str, doomed: impl Fn(&str) -> bool) {
    let Ok(client) = redis::Client::open(format!("redis://{server}")) else {
        return;
    };
    let Ok(mut connection) = client.get_connection_with_timeout(Duration::from_secs(5)) else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(&mut connection)
        else {
            return;
        };
        let doomed: Vec<&String> = keys.iter().filter(|key| doomed(key)).collect();
        if !doomed.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("UNLINK").arg(&doomed).query(&mut connection);
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Deletes the keys of test runs that started more than an hour ago (runs that died
/// before cleaning up).
pub fn sweep_leftovers(server: SocketAddr) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    delete_keys(server, &format!("{TEST_PREFIX}*"), |key| {
        key.strip_prefix(TEST_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|secs| secs.parse::<u64>().ok())
            .is_some_and(|secs| now.saturating_sub(secs) > LEFTOVER_AGE.as_secs())
    });
}

/// Deletes every key under `prefix` (removes what the guard's run created, even when the
/// run failed).
pub struct Cleanup {
    pub server: SocketAddr,
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        delete_keys(self.server, &format!("{}:*", self.prefix), |_| true);
    }
}

/// The transport suite's factory: connections to the shared server through a proxy that
/// `disrupt` severs, every key under a prefix of this factory's, deleted when it drops.
pub struct Factory {
    proxy: OnceCell<TcpProxy>,
    prefix: String,
    _cleanup: Cleanup,
}

impl Factory {
    pub fn new() -> Self {
        sweep_leftovers(SHARED);
        let prefix = unique_prefix();
        Self {
            proxy: OnceCell::new(),
            _cleanup: Cleanup {
                server: SHARED,
                prefix: prefix.clone(),
            },
            prefix,
        }
    }

    async fn proxy(&self) -> &TcpProxy {
        self.proxy
            .get_or_init(|| async {
                TcpProxy::start(SHARED)
                    .await
                    .expect("a loopback proxy to the shared Redis")
            })
            .await
    }
}

impl TransportFactory for Factory {
    type Connection = RedisTransport;

    async fn connect(&self) -> Result<RedisTransport, TransportError> {
        let url = format!("redis://{}", self.proxy().await.addr());
        RedisTransport::connect_with(&url, test_options(&self.prefix)).await
    }

    async fn disrupt(&self) -> bool {
        self.proxy().await.sever();
        true
    }
}

/// A `redis-server` of the test's own, on a free loopback port, with its data in a
/// temporary directory removed when it drops.
pub struct PrivateServer {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts a server with these extra arguments (e.g. `--requirepass x`).
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("cairn-redis-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut server = Self {
            port,
            dir,
            args: args.iter().map(|&a| a.to_owned()).collect(),
            child: None,
        };
        server.run()?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// Starts the process again (after [`stop`](Self::stop)), same port, same directory.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("redis-server on port {} did not come up", self.port)
    }

    /// Whether the server answers `PING` (with `PONG`, or asking for a password).
    fn answers(&self) -> bool {
        let Ok(mut socket) = TcpStream::connect(self.addr()) else {
            return false;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
        if socket.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut reply = [0u8; 16];
        match socket.read(&mut reply) {
            Ok(n) if n > 0 => reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH"),
            _ => false,
        }
    }

    /// Kills the process (SIGKILL, as a crash would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
