//! The `cairn` program, run as a user runs it: the real binary on a fresh data directory,
//! its output read back (and parsed, for `--json`), its exit codes checked.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use cairn::log::{LogOptions, LogStore};
use serde_json::Value;

/// How long a test waits for output that should come.
const PATIENCE: Duration = Duration::from_secs(120);

/// A directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "cli-{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run of the program did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn failed_with(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self
    }

    /// Every stdout line, parsed as JSON.
    #[track_caller]
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
            })
            .collect()
    }
}

fn cairn_command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
    command
        .arg("--data-dir")
        .arg(dir)
        // Another test's process never holds this directory, but a tail of this test may.
        .args(["--lock-wait", "60s"])
        .stdin(Stdio::null());
    command
}

fn cairn(dir: &Path, args: &[&str]) -> Run {
    let output = cairn_command(dir)
        .args(args)
        .output()
        .expect("the cairn binary runs");
    Run::from(output)
}

fn append(dir: &Path, stream: &str, event_type: &str, data: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--json", "append", stream, "--type", event_type, "--data", data,
    ];
    args.extend_from_slice(extra);
    let run = cairn(dir, &args).ok();
    let mut lines = run.json_lines();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    lines.remove(0)
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("a type"))
        .collect()
}

#[test]
fn appended_events_read_back_forwards_backwards_and_from_a_revision() {
    let dir = TempDir::new("read");
    let first = append(
        dir.path(),
        "order-1",
        "Placed",
        r#"{"n":0}"#,
        &["--expected", "no-stream"],
    );
    assert_eq!(first["revision"], 0);
    assert_eq!(first["stream"], "order-1");
    append(
        dir.path(),
        "order-1",
        "Paid",
        r#"{"n":1}"#,
        &["--expected", "0"],
    );
    let third = append(
        dir.path(),
        "order-1",
        "Shipped",
        r#"{"n":2}"#,
        &["--expected", "exists"],
    );
    assert_eq!(third["revision"], 2);
    assert!(third["position"].as_u64() > first["position"].as_u64());

    let forwards = cairn(dir.path(), &["read", "order-1"]).ok();
    let placed = forwards
        .stdout
        .find("order-1@0  Placed")
        .expect("Placed is printed");
    let shipped = forwards
        .stdout
        .find("order-1@2  Shipped")
        .expect("Shipped is printed");
    assert!(placed < shipped, "{}", forwards.stdout);
    assert!(
        forwards.stdout.contains(r#"{"n":1}"#),
        "{}",
        forwards.stdout
    );

    let backwards = cairn(dir.path(), &["--json", "read", "order-1", "--backwards"]).ok();
    assert_eq!(
        types(&backwards.json_lines()),
        ["Shipped", "Paid", "Placed"]
    );

    let last = cairn(
        dir.path(),
        &["--json", "read", "order-1", "--backwards", "--limit", "1"],
    )
    .ok();
    assert_eq!(types(&last.json_lines()), ["Shipped"]);

    let from_one = cairn(dir.path(), &["--json", "read", "order-1", "--from", "1"]).ok();
    assert_eq!(types(&from_one.json_lines()), ["Paid", "Shipped"]);

    let none = cairn(dir.path(), &["read", "order-2"]).ok();
    assert!(none.stdout.is_empty());
    assert!(none.stderr.contains("no events"), "{}", none.stderr);
}

#[test]
fn reading_all_filters_by_category_type_and_prefix() {
    let dir = TempDir::new("all");
    append(dir.path(), "order-1", "OrderPlaced", "{}", &[]);
    append(dir.path(), "payment-1", "PaymentCaptured", "{}", &[]);
    append(dir.path(), "order-2", "OrderPlaced", "{}", &[]);
    append(dir.path(), "order-1", "OrderShipped", "{}", &[]);
    append(dir.path(), "orders-archive", "Archived", "{}", &[]);

    let all = cairn(dir.path(), &["--json", "read", "--all"])
        .ok()
        .json_lines();
    assert_eq!(
        types(&all),
        [
            "OrderPlaced",
            "PaymentCaptured",
            "OrderPlaced",
            "OrderShipped",
            "Archived"
        ]
    );
    let positions: Vec<u64> = all
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");

    let orders = cairn(
        dir.path(),
        &["--json", "read", "--all", "--category", "order"],
    )
    .ok()
    .json_lines();
    let streams: Vec<&str> = orders
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["order-1", "order-2", "order-1"]);

    let placed = cairn(
        dir.path(),
        &[
            "--json",
            "read",
            "--all",
            "--type",
            "OrderPlaced",
            "--type",
            "Archived",
        ],
    )
    .ok()
    .json_lines();
    assert_eq!(types(&placed), ["OrderPlaced", "OrderPlaced", "Archived"]);

    let prefixed = cairn(
        dir.path(),
        &["--json", "read", "--all", "--prefix", "orders"],
    )
    .ok()
    .json_lines();
    assert_eq!(types(&prefixed), ["Archived"]);

    let newest_two = cairn(
        dir.path(),
        &["--json", "read", "--all", "--backwards", "--limit", "2"],
    )
    .ok()
    .json_lines();
    assert_eq!(types(&newest_two), ["Archived", "OrderShipped"]);

    let from = positions[3].to_string();
    let tail = cairn(dir.path(), &["--json", "read", "--all", "--from", &from])
        .ok()
        .json_lines();
    assert_eq!(types(&tail), ["OrderShipped", "Archived"]);

    let human = cairn(dir.path(), &["read", "--all", "--category", "payment"]).ok();
    assert!(
        human.stdout.contains("payment-1@0  PaymentCaptured"),
        "{}",
        human.stdout
    );
}

#[test]
fn json_output_carries_the_whole_envelope() {
    let dir = TempDir::new("json");
    let id = "0190f2a4-7c1e-7d3a-9b2f-5e6d7c8b9a01";
    append(
        dir.path(),
        "order-7",
        "OrderPlaced",
        r#"{"total": 42, "lines": ["mug"]}"#,
        &[
            "--id",
            id,
            "--metadata",
            "correlationid=checkout-7",
            "--metadata",
            "tenant=acme",
        ],
    );
    let events = cairn(dir.path(), &["--json", "read", "order-7"])
        .ok()
        .json_lines();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event["id"], id);
    assert_eq!(event["stream"], "order-7");
    assert_eq!(event["revision"], 0);
    assert!(event["position"].is_u64());
    assert_eq!(event["type"], "OrderPlaced");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["specversion"], "1.0");
    let time = event["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.contains('T'), "{time}");
    assert_eq!(event["metadata"]["correlationid"], "checkout-7");
    assert_eq!(event["metadata"]["tenant"], "acme");
    assert_eq!(event["data"]["total"], 42);
    assert_eq!(event["data"]["lines"][0], "mug");

    // Retrying with the same id appends nothing twice.
    let again = append(
        dir.path(),
        "order-7",
        "OrderPlaced",
        r#"{"total": 42, "lines": ["mug"]}"#,
        &[
            "--id",
            id,
            "--metadata",
            "correlationid=checkout-7",
            "--metadata",
            "tenant=acme",
        ],
    );
    assert_eq!(again["revision"], 0);
    assert_eq!(
        cairn(dir.path(), &["--json", "read", "order-7"])
            .ok()
            .json_lines()
            .len(),
        1
    );
}

#[test]
fn streams_are_listed_with_state_and_last_revision() {
    let dir = TempDir::new("streams");
    append(dir.path(), "b-1", "T", "1", &[]);
    append(dir.path(), "a-1", "T", "1", &[]);
    append(dir.path(), "a-1", "T", "2", &[]);
    append(dir.path(), "c-1", "T", "3", &[]);

    let listed = cairn(dir.path(), &["--json", "streams"]).ok().json_lines();
    let names: Vec<&str> = listed
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a-1", "b-1", "c-1"]);
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["last_revision"], 1);
    assert_eq!(listed[1]["last_revision"], 0);

    let page = cairn(
        dir.path(),
        &["--json", "streams", "--after", "a-1", "--limit", "1"],
    )
    .ok()
    .json_lines();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0]["stream"], "b-1");

    let table = cairn(dir.path(), &["streams"]).ok();
    assert!(table.stdout.starts_with("STREAM"), "{}", table.stdout);
    assert!(table.stdout.contains("a-1"), "{}", table.stdout);
}

#[test]
fn a_wrong_expected_revision_fails_saying_expected_and_actual() {
    let dir = TempDir::new("conflict");
    append(dir.path(), "order-1", "Placed", "{}", &[]);
    let run = cairn(
        dir.path(),
        &[
            "append",
            "order-1",
            "--type",
            "Paid",
            "--data",
            "{}",
            "--expected",
            "5",
        ],
    )
    .failed_with(1);
    assert!(run.stderr.contains("expected revision 5"), "{}", run.stderr);
    assert!(run.stderr.contains("actual revision 0"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);

    let run = cairn(
        dir.path(),
        &[
            "append",
            "order-1",
            "--type",
            "Paid",
            "--data",
            "{}",
            "--expected",
            "no-stream",
        ],
    )
    .failed_with(1);
    assert!(run.stderr.contains("expected no stream"), "{}", run.stderr);
    // Nothing of a refused append is written.
    let events = cairn(dir.path(), &["--json", "read", "order-1"])
        .ok()
        .json_lines();
    assert_eq!(events.len(), 1);
}

#[test]
fn invalid_arguments_are_usage_errors_and_write_nothing() {
    let dir = TempDir::new("invalid");
    let reserved = cairn(
        dir.path(),
        &["append", "$all", "--type", "T", "--data", "{}"],
    )
    .failed_with(2);
    assert!(reserved.stderr.contains("reserved"), "{}", reserved.stderr);

    let control = cairn(
        dir.path(),
        &["append", "a\tb", "--type", "T", "--data", "{}"],
    )
    .failed_with(2);
    assert!(
        control.stderr.contains("control character"),
        "{}",
        control.stderr
    );

    let json = cairn(
        dir.path(),
        &["append", "order-1", "--type", "T", "--data", "{total: 1}"],
    )
    .failed_with(2);
    assert!(json.stderr.contains("invalid JSON"), "{}", json.stderr);

    let durability = cairn(dir.path(), &["--durability", "sometimes", "streams"]).failed_with(2);
    assert!(
        durability.stderr.contains("unknown durability"),
        "{}",
        durability.stderr
    );

    let expected = cairn(
        dir.path(),
        &[
            "append",
            "order-1",
            "--type",
            "T",
            "--data",
            "{}",
            "--expected",
            "latest",
        ],
    )
    .failed_with(2);
    assert!(
        expected.stderr.contains("invalid expected revision"),
        "{}",
        expected.stderr
    );

    let metadata = cairn(
        dir.path(),
        &[
            "append",
            "order-1",
            "--type",
            "T",
            "--data",
            "{}",
            "--metadata",
            "novalue",
        ],
    )
    .failed_with(2);
    assert!(metadata.stderr.contains("key=value"), "{}", metadata.stderr);

    let filter_without_all =
        cairn(dir.path(), &["read", "order-1", "--category", "order"]).failed_with(2);
    assert!(!filter_without_all.stderr.is_empty());

    assert!(
        !dir.path().exists(),
        "no store is created by refused commands"
    );

    let empty_type = cairn(
        dir.path(),
        &["append", "order-1", "--type", "", "--data", "{}"],
    )
    .failed_with(1);
    assert!(
        empty_type.stderr.contains("invalid"),
        "{}",
        empty_type.stderr
    );
}

#[test]
fn reading_a_directory_without_a_store_fails_cleanly() {
    let dir = TempDir::new("missing");
    let run = cairn(dir.path(), &["read", "--all"]).failed_with(1);
    assert!(run.stderr.contains("no store at"), "{}", run.stderr);
    assert!(!dir.path().exists(), "reading creates nothing");
}

#[test]
fn a_locked_data_directory_is_refused_naming_the_lock() {
    let dir = TempDir::new("locked");
    let store =
        LogStore::open(dir.path(), LogOptions::default()).expect("the test opens the store");
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--lock-wait",
            "300ms",
            "append",
            "order-1",
            "--type",
            "T",
            "--data",
            "{}",
        ])
        .output()
        .expect("the cairn binary runs");
    let run = Run::from(output).failed_with(1);
    assert!(run.stderr.contains("locked"), "{}", run.stderr);
    assert!(run.stderr.contains("LOCK"), "{}", run.stderr);
    drop(store);
    // Once released, the directory is usable.
    append(dir.path(), "order-1", "T", "{}", &[]);
}

#[test]
fn the_demo_writes_an_order_and_reads_it_back() {
    let dir = TempDir::new("demo");
    let run = cairn(dir.path(), &["demo"]).ok();
    for event_type in [
        "OrderPlaced",
        "PaymentCaptured",
        "OrderPaid",
        "ShipmentDispatched",
        "OrderShipped",
    ] {
        assert!(
            run.stdout.contains(event_type),
            "{event_type} missing:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains("correlation id checkout-"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("The data lives in"), "{}", run.stdout);
    let dir_name = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(run.stdout.contains(&dir_name), "{}", run.stdout);

    let streams = cairn(dir.path(), &["--json", "streams"]).ok().json_lines();
    let names: Vec<&str> = streams
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names[0].starts_with("order-") && names[1].starts_with("payment-"),
        "{names:?}"
    );
    assert_eq!(streams[0]["last_revision"], 2);

    // A second run is a second order; --json gives the events as JSON lines.
    let again = cairn(dir.path(), &["--json", "demo"]).ok().json_lines();
    assert_eq!(again.len(), 5);
    let correlation = again[0]["metadata"]["correlationid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        again
            .iter()
            .all(|e| e["metadata"]["correlationid"] == correlation.as_str())
    );
    assert!(again[1]["metadata"]["causationid"] == again[0]["id"]);
    assert_eq!(
        cairn(dir.path(), &["--json", "streams"])
            .ok()
            .json_lines()
            .len(),
        6
    );
}

/// A running `cairn tail`, its output lines arriving on channels.
struct Tail {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Tail {
    fn spawn(dir: &Path, args: &[&str]) -> Self {
        let mut child = cairn_command(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cairn tail starts");
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let stderr = lines(child.stderr.take().expect("piped stderr"));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    #[track_caller]
    fn wait_until_following(&self) {
        loop {
            let line = self
                .stderr
                .recv_timeout(PATIENCE)
                .expect("tail says it is following");
            if line.contains("following") {
                return;
            }
        }
    }

    #[track_caller]
    fn next_event(&self) -> Value {
        let line = self
            .stdout
            .recv_timeout(PATIENCE)
            .expect("tail prints the event");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }

    /// Sends Ctrl-C (SIGINT) and returns the exit code.
    fn interrupt(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().expect("tail can be waited for") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!("tail did not stop on Ctrl-C");
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(source: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    receiver
}

#[test]
fn tail_follows_events_appended_by_another_process_until_ctrl_c() {
    let dir = TempDir::new("tail");
    append(dir.path(), "order-1", "Before", "{}", &[]);
    let tail = Tail::spawn(dir.path(), &["--json", "tail", "--interval", "100ms"]);
    tail.wait_until_following();

    append(dir.path(), "order-1", "After", r#"{"seen":true}"#, &[]);
    let event = tail.next_event();
    assert_eq!(
        event["type"], "After",
        "events from before the tail started are not shown"
    );
    assert_eq!(event["data"]["seen"], true);
    append(dir.path(), "payment-1", "Later", "{}", &[]);
    assert_eq!(tail.next_event()["type"], "Later");

    assert_eq!(tail.interrupt(), Some(0));
}

#[test]
fn tail_of_one_stream_from_the_start_shows_its_history_then_new_events() {
    let dir = TempDir::new("tail-stream");
    append(dir.path(), "order-1", "First", "{}", &[]);
    append(dir.path(), "order-2", "Other", "{}", &[]);
    let tail = Tail::spawn(
        dir.path(),
        &[
            "--json",
            "tail",
            "order-1",
            "--from-start",
            "--interval",
            "100ms",
        ],
    );
    assert_eq!(tail.next_event()["type"], "First");
    tail.wait_until_following();
    append(dir.path(), "order-2", "Ignored", "{}", &[]);
    append(dir.path(), "order-1", "Second", "{}", &[]);
    let second = tail.next_event();
    assert_eq!(second["type"], "Second");
    assert_eq!(second["revision"], 1);
    assert_eq!(tail.interrupt(), Some(0));
}

#[test]
fn closing_stdout_early_is_not_an_error() {
    let dir = TempDir::new("pipe");
    // One event larger than a pipe's buffer, so the reader's hang-up is felt mid-write.
    let big = format!("\"{}\"", "x".repeat(100_000));
    append(dir.path(), "order-1", "Big", &big, &[]);
    let mut child = cairn_command(dir.path())
        .args(["read", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cairn read starts");
    // Read one byte, then hang up, as `| head -c 1` does.
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("some output");
    drop(stdout);
    let output = child.wait_with_output().expect("cairn read ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}
