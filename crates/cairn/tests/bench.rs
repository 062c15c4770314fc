//! `cairn bench`, run as a user runs it with tiny counts: every workload runs, the JSON
//! report parses and has its fields, and the bench directory is gone afterwards. With the
//! `peers` feature, the same against the PostgreSQL and NATS servers on this machine.
//!
//! No performance is asserted here: the targets live in the benchmark's own output.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

/// A path for one test's bench directory (not created), removed when dropped.
struct TempPath(PathBuf);

impl TempPath {
    fn new(test: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "bench-{test}-{}-{}",
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

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Tiny bounds, so that a run takes seconds even in a debug build.
const TINY: &[&str] = &[
    "--count",
    "300",
    "--duration",
    "2s",
    "--probe",
    "100ms",
    "--rate",
    "500",
];

/// The events the latency workload appends in its one-second warm-up at `--rate 500`:
/// delivered and stored, but not counted in its figures.
const LATENCY_WARM_UP_EVENTS: u64 = 500;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn bench(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--json")
        .arg("bench")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the cairn binary runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[track_caller]
fn report(run: &Run) -> Value {
    assert_eq!(
        run.code,
        Some(0),
        "bench failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("the report is not one JSON object: {e}\n{}", run.stdout))
}

fn workload<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["workloads"]
        .as_array()
        .expect("a list of workloads")
        .iter()
        .find(|w| w["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {report}"))
}

#[track_caller]
fn assert_measured(workload: &Value) {
    assert!(workload["events"].as_u64().unwrap() > 0, "{workload}");
    assert!(workload["seconds"].as_f64().unwrap() > 0.0, "{workload}");
    assert!(
        workload["events_per_sec"].as_f64().unwrap() > 0.0,
        "{workload}"
    );
    assert!(workload["mb_per_sec"].as_f64().unwrap() > 0.0, "{workload}");
    let latency = &workload["latency"];
    for field in ["p50_us", "p99_us", "p999_us", "max_us", "mean_us"] {
        assert!(latency[field].is_number(), "{field} missing in {workload}");
    }
    assert!(
        latency["p50_us"].as_f64() <= latency["p99_us"].as_f64(),
        "{workload}"
    );
    assert!(
        latency["p99_us"].as_f64() <= latency["p999_us"].as_f64(),
        "{workload}"
    );
}

#[test]
fn every_workload_runs_and_reports_json() {
    let dir = TempPath::new("all");
    let run = bench(dir.path(), TINY);
    let report = report(&run);

    let conditions = &report["conditions"];
    assert_eq!(conditions["event_size"], 256);
    assert_eq!(conditions["durability"], "always");
    assert_eq!(conditions["count"], 300);
    assert!(conditions["filesystem"].as_str().unwrap().len() > 3);
    assert!(conditions["build"] == "debug" || conditions["build"] == "release");

    let probes = &report["probes"];
    for probe in [&probes["before"], &probes["after"]] {
        assert!(probe["flushes"].as_u64().unwrap() > 0, "{probe}");
        assert!(probe["flushes_per_sec"].as_f64().unwrap() > 0.0, "{probe}");
        assert!(probe["latency"]["p99_us"].is_number(), "{probe}");
    }
    assert!(probes["difference"].is_number());
    assert!(report["noisy"].is_boolean());

    let names: Vec<&str> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "append-1w",
            "append-64w",
            "batch-16w",
            "latency",
            "read-all"
        ]
    );
    for name in &names {
        let workload = workload(&report, name);
        assert_measured(workload);
        let target = &workload["target"];
        assert!(target["goal"].is_string(), "{workload}");
        assert!(target["met"].is_boolean(), "{workload}");
    }
    assert_eq!(workload(&report, "append-64w")["writers"], 64);
    assert_eq!(workload(&report, "batch-16w")["batch"], 100);
    assert_eq!(
        workload(&report, "batch-16w")["events"].as_u64().unwrap() % 100,
        0
    );
    // The latency workload delivers every event it appended.
    let latency = workload(&report, "latency");
    assert_eq!(latency["events"], latency["latency"]["samples"]);
    // It counts what it offered after the warm-up: 500 ev/s for 2 s.
    assert_eq!(latency["events"], 1000);
    // read-all reads back everything the write workloads appended.
    let written: u64 = ["append-1w", "append-64w", "batch-16w", "latency"]
        .iter()
        .map(|name| workload(&report, name)["events"].as_u64().unwrap())
        .sum::<u64>()
        + LATENCY_WARM_UP_EVENTS;
    assert_eq!(
        workload(&report, "read-all")["events"].as_u64().unwrap(),
        written
    );

    assert!(
        run.stderr.contains("append-64w"),
        "progress on stderr:\n{}",
        run.stderr
    );
    assert!(!dir.path().exists(), "the bench directory is removed");
}

#[test]
fn chosen_workloads_run_alone_with_their_own_shape() {
    let dir = TempPath::new("custom");
    let mut args = TINY.to_vec();
    args.extend([
        "--workload",
        "custom,read-all",
        "--writers",
        "3",
        "--batch",
        "7",
        "--size",
        "64",
    ]);
    let report = report(&bench(dir.path(), &args));
    let custom = workload(&report, "custom");
    assert_measured(custom);
    assert_eq!(custom["writers"], 3);
    assert_eq!(custom["batch"], 7);
    assert!(custom["target"].is_null());
    assert_measured(workload(&report, "read-all"));
    assert_eq!(report["workloads"].as_array().unwrap().len(), 2);
    assert_eq!(report["conditions"]["event_size"], 64);
    assert!(!dir.path().exists());
}

#[test]
fn read_all_alone_writes_its_events_first_and_takes_no_probe() {
    let dir = TempPath::new("read");
    let mut args = TINY.to_vec();
    args.extend(["--workload", "read-all"]);
    let report = report(&bench(dir.path(), &args));
    let read = workload(&report, "read-all");
    assert_measured(read);
    assert!(read["events"].as_u64().unwrap() >= 300);
    assert!(report["probes"].is_null());
    assert!(!dir.path().exists());
}

#[test]
fn the_human_report_is_a_table_with_its_conditions() {
    let dir = TempPath::new("table");
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["bench", "--workload", "probe,append-1w"])
        .arg("--dir")
        .arg(dir.path())
        .args(TINY)
        .stdin(Stdio::null())
        .output()
        .expect("the cairn binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("conditions: 256-byte events"), "{stdout}");
    assert!(stdout.contains("disk probe"), "{stdout}");
    assert!(stdout.contains("probe (before)"), "{stdout}");
    assert!(stdout.contains("probe (after)"), "{stdout}");
    let row = stdout
        .lines()
        .find(|line| line.starts_with("append-1w"))
        .unwrap_or_else(|| panic!("no append-1w row:\n{stdout}"));
    assert!(row.contains(">= 0.8 x probe"), "{row}");
    assert!(!dir.path().exists());
}

#[test]
fn a_directory_with_content_is_refused_and_left_alone() {
    let dir = TempPath::new("busy");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
    let run = bench(dir.path(), TINY);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("not empty"), "{}", run.stderr);
    assert!(dir.path().join("precious.txt").exists());
}

#[cfg(not(feature = "peers"))]
#[test]
fn comparing_needs_the_peers_feature() {
    let dir = TempPath::new("nopeers");
    let mut args = TINY.to_vec();
    args.extend(["--compare", "postgres"]);
    let run = bench(dir.path(), &args);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("`peers` feature"), "{}", run.stderr);
    assert!(!dir.path().exists());
}

#[cfg(feature = "peers")]
#[test]
fn peers_run_the_write_workloads_beside_cairn() {
    let dir = TempPath::new("peers");
    let mut args = TINY.to_vec();
    args.extend([
        "--compare",
        "postgres,nats",
        "--workload",
        "append-1w,append-64w,batch-16w",
    ]);
    let run = bench(dir.path(), &args);
    let report = report(&run);
    let peers = report["peers"].as_array().expect("a list of peers");
    let names: Vec<&str> = peers.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["postgres", "nats"]);
    for peer in peers {
        assert!(!peer["version"].as_str().unwrap().is_empty(), "{peer}");
        assert!(
            peer["endpoint"].as_str().unwrap().contains("127.0.0.1"),
            "{peer}"
        );
    }
    for name in ["append-1w", "append-64w", "batch-16w"] {
        let workload = workload(&report, name);
        assert_measured(workload);
        let results = workload["peers"].as_array().expect("peer results");
        assert_eq!(results.len(), 2, "{workload}");
        for result in results {
            assert_measured(result);
            assert!(result["cairn_ratio"].as_f64().unwrap() > 0.0, "{result}");
        }
    }
    let batch = workload(&report, "batch-16w");
    for result in batch["peers"].as_array().unwrap() {
        assert_eq!(result["events"].as_u64().unwrap() % 100, 0, "{result}");
    }
    assert!(!dir.path().exists());
}

#[cfg(feature = "peers")]
#[test]
fn an_unreachable_peer_is_named_with_its_address() {
    for (peer, flag, service) in [
        ("postgres", "--postgres-addr", "PostgreSQL"),
        ("nats", "--nats-addr", "NATS"),
    ] {
        let dir = TempPath::new("unreachable");
        let mut args = TINY.to_vec();
        args.extend(["--compare", peer, flag, "127.0.0.1:1"]);
        let run = bench(dir.path(), &args);
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(run.stderr.contains(service), "{}", run.stderr);
        assert!(run.stderr.contains("127.0.0.1:1"), "{}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(!dir.path().exists(), "the bench directory is removed");
    }
}

#[cfg(not(feature = "postgres"))]
#[test]
fn benching_postgres_needs_the_postgres_feature() {
    let dir = TempPath::new("nopostgres");
    let mut args = TINY.to_vec();
    args.extend(["--store", "postgres"]);
    let run = bench(dir.path(), &args);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("`postgres` feature"), "{}", run.stderr);
    assert!(!dir.path().exists());
}

#[cfg(feature = "postgres")]
#[test]
fn the_postgres_store_runs_the_workloads_beside_the_naive_insert() {
    let dir = TempPath::new("pgstore");
    let mut args = TINY.to_vec();
    args.extend([
        "--store",
        "postgres",
        "--compare",
        "postgres",
        "--workload",
        "append-1w,batch-16w,latency,read-all",
    ]);
    let run = bench(dir.path(), &args);
    let report = report(&run);
    for name in ["append-1w", "batch-16w", "latency", "read-all"] {
        assert_measured(workload(&report, name));
    }
    let append = workload(&report, "append-1w");
    let naive = &append["peers"].as_array().expect("peer results")[0];
    assert_eq!(naive["peer"], "postgres", "{append}");
    assert_measured(naive);
    // The PostgreSQL targets apply, not the embedded engine's.
    assert_eq!(
        append["target"]["goal"], ">= 0.8 x naive insert",
        "{append}"
    );
    assert_eq!(
        workload(&report, "batch-16w")["target"]["goal"],
        ">= 80,000 ev/s"
    );
    assert_eq!(
        workload(&report, "latency")["target"]["goal"],
        "p99 <= 20,000 µs"
    );
    let notes = report["notes"].to_string();
    assert!(notes.contains("cairn-postgres"), "{notes}");
    // Every event written was read back from $all.
    let written: u64 = ["append-1w", "batch-16w", "latency"]
        .iter()
        .map(|name| workload(&report, name)["events"].as_u64().unwrap())
        .sum::<u64>()
        + LATENCY_WARM_UP_EVENTS;
    assert_eq!(
        workload(&report, "read-all")["events"].as_u64(),
        Some(written)
    );
    assert!(!dir.path().exists());
}

#[test]
fn the_open_workload_reports_both_opens_with_their_memory() {
    let dir = TempPath::new("open");
    let run = bench(
        dir.path(),
        &[
            "--workload",
            "open",
            "--open-events",
            "3000",
            "--open-streams",
            "250",
        ],
    );
    let report = report(&run);
    for (name, goal) in [
        ("open-clean", "<= 3 s, <= 300 MB"),
        ("open-crash", "<= 10 s, <= 300 MB"),
    ] {
        let open = workload(&report, name);
        assert_measured(open);
        assert_eq!(open["events"], 3000, "{open}");
        assert_eq!(open["target"]["goal"], goal);
        let detail = open["detail"].as_str().expect("a detail");
        assert!(
            detail.contains("3,000 events in 250 streams") && detail.contains("resident memory"),
            "{detail}"
        );
    }
    assert!(!dir.path().exists(), "the bench directory is removed");
}

#[test]
fn the_es_suite_runs_commands_and_loads_through_a_repository() {
    let dir = TempPath::new("es");
    let mut args = vec!["es", "--es-history", "2500"];
    args.extend(TINY);
    let report = report(&bench(dir.path(), &args));
    for name in ["es-commands", "es-commands-uncached", "es-load"] {
        let row = workload(&report, name);
        assert!(row["events"].as_u64().unwrap() > 0, "{row}");
        assert!(row["latency"]["p99_us"].as_f64().unwrap() > 0.0, "{row}");
    }
    for name in ["es-commands", "es-load"] {
        assert!(workload(&report, name)["target"]["goal"].is_string());
    }
    assert!(workload(&report, "es-commands-uncached")["target"].is_null());
    assert_eq!(workload(&report, "es-commands")["writers"], 64);
    assert!(
        report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["name"].as_str().unwrap().starts_with("es-")),
        "only the es workloads ran: {report}"
    );
}

#[test]
fn the_bus_suite_runs_the_transport_alone_and_through_the_router() {
    let dir = TempPath::new("bus");
    let mut args = vec!["bus"];
    args.extend(TINY);
    let report = report(&bench(dir.path(), &args));
    for name in ["bus-raw", "bus-router"] {
        let row = workload(&report, name);
        assert!(row["events"].as_u64().unwrap() > 0, "{row}");
        assert!(row["latency"]["p99_us"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(
        workload(&report, "bus-router")["target"]["goal"],
        ">= 1,000,000 msg/s"
    );
    assert!(workload(&report, "bus-raw")["target"].is_null());
    assert!(
        report["probes"].is_null(),
        "the bus suite writes nothing to disk"
    );
}

#[test]
fn the_bus_suite_runs_a_broker_beside_its_own_client() {
    let dir = TempPath::new("bus-redis");
    let mut args = vec!["bus", "--transport", "redis"];
    args.extend(TINY);
    let report = report(&bench(dir.path(), &args));
    for name in ["redis-raw", "redis-router"] {
        let row = workload(&report, name);
        assert!(row["events"].as_u64().unwrap() > 0, "{row}");
    }
    assert_eq!(
        workload(&report, "redis-router")["target"]["goal"],
        ">= 0.8 x redis-raw"
    );
    assert!(
        workload(&report, "redis-raw")["detail"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:6379")
    );
}
