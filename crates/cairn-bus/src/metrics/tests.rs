use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::{BusMetrics, LATENCY_BUCKETS_MICROS, MetricsLayer};
use crate::handler::{HandlerError, Incoming};
use crate::message::Message;

fn request(n: u32) -> Incoming {
    Incoming::new("orders", Message::new("order.placed", n.to_string()))
}

/// Fails the messages whose payload is an odd number.
fn odd_ones_fail()
-> impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone {
    tower::service_fn(|request: Incoming| async move {
        let n: u32 = std::str::from_utf8(&request.message.payload)
            .unwrap()
            .parse()
            .unwrap();
        if n % 2 == 1 {
            Err(HandlerError::permanent("odd"))
        } else {
            Ok(())
        }
    })
}

#[tokio::test]
async fn counts_received_handled_and_failed_messages() {
    let metrics = BusMetrics::new();
    let mut service = MetricsLayer::new(metrics.clone()).layer(odd_ones_fail());
    for n in 0..10 {
        let _ = service.ready().await.unwrap().call(request(n)).await;
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.received, 10);
    assert_eq!(snapshot.handled, 5);
    assert_eq!(snapshot.failed, 5);
    assert_eq!(snapshot.in_flight, 0);
    assert_eq!(snapshot.latency.count, 10);
    assert_eq!(snapshot.retried, 0);
    assert_eq!(snapshot.parked, 0);
}

#[tokio::test]
async fn in_flight_rises_while_handlers_run_and_falls_when_they_end_or_are_dropped() {
    let gate = Arc::new(Semaphore::new(0));
    let waiting = Arc::clone(&gate);
    let metrics = BusMetrics::new();
    let mut service =
        MetricsLayer::new(metrics.clone()).layer(tower::service_fn(move |_: Incoming| {
            let gate = Arc::clone(&waiting);
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, HandlerError>(())
            }
        }));
    let mut running = Vec::new();
    for n in 0..3 {
        running.push(service.ready().await.unwrap().call(request(n)));
    }
    assert_eq!(metrics.snapshot().in_flight, 3);

    drop(running.pop());
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.in_flight, 2);
    assert_eq!(snapshot.handled + snapshot.failed, 0);

    gate.add_permits(2);
    for future in running {
        future.await.unwrap();
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.in_flight, 0);
    assert_eq!(snapshot.received, 3);
    assert_eq!(snapshot.handled, 2);
}

#[test]
fn latencies_land_in_the_first_bucket_at_or_above_them() {
    let metrics = BusMetrics::new();
    let micros = Duration::from_micros;
    let cases = [
        (Duration::ZERO, 0),
        (micros(50), 0),
        (micros(50) + Duration::from_nanos(1), 1),
        (micros(999), 4),
        (micros(1_000), 4),
        (Duration::from_secs(10), 16),
        (Duration::from_secs(10) + Duration::from_nanos(1), 17),
        (Duration::MAX, 17),
    ];
    for (latency, _) in cases {
        metrics.observe_latency(latency);
    }
    let mut expected = [0u64; LATENCY_BUCKETS_MICROS.len() + 1];
    for (_, bucket) in cases {
        expected[bucket] += 1;
    }
    let latency = metrics.snapshot().latency;
    assert_eq!(latency.buckets, expected);
    assert_eq!(latency.count, cases.len() as u64);
    assert_eq!(*latency.cumulative().last().unwrap(), latency.count);
}

#[tokio::test(start_paused = true)]
async fn the_handler_latency_is_timed() {
    let metrics = BusMetrics::new();
    let service =
        MetricsLayer::new(metrics.clone()).layer(tower::service_fn(|_: Incoming| async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            Ok::<_, HandlerError>(())
        }));
    service.oneshot(request(0)).await.unwrap();
    let latency = metrics.snapshot().latency;
    assert_eq!(latency.sum, Duration::from_millis(3));
    let bucket = LATENCY_BUCKETS_MICROS
        .iter()
        .position(|&b| b == 5_000)
        .unwrap();
    assert_eq!(latency.buckets[bucket], 1);
    assert_eq!(latency.count, 1);
}

#[test]
fn counts_from_many_threads_add_up() {
    let metrics = BusMetrics::new();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for _ in 0..1_000 {
                    metrics.record_retry();
                    metrics.record_parked();
                }
            });
        }
    });
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.retried, 8_000);
    assert_eq!(snapshot.parked, 8_000);
}

#[test]
fn lag_gauges_are_set_replaced_and_removed() {
    let metrics = BusMetrics::new();
    metrics.set_lag("orders", "billing", Some(5));
    metrics.set_lag("orders", "shipping", Some(7));
    metrics.set_lag("orders", "billing", Some(3));
    metrics.set_lag("audit", "archive", Some(0));
    let lag: Vec<(String, String, u64)> = metrics
        .snapshot()
        .lag
        .into_iter()
        .map(|l| (l.topic, l.group, l.lag))
        .collect();
    assert_eq!(
        lag,
        [
            ("audit".into(), "archive".into(), 0),
            ("orders".into(), "billing".into(), 3),
            ("orders".into(), "shipping".into(), 7),
        ]
    );
    metrics.set_lag("orders", "billing", None);
    metrics.set_lag("audit", "archive", None);
    metrics.set_lag("nowhere", "nobody", None);
    let lag = metrics.snapshot().lag;
    assert_eq!(lag.len(), 1);
    assert_eq!(lag[0].group, "shipping");
}

#[tokio::test]
async fn the_retry_hook_counts_retries() {
    let metrics = BusMetrics::new();
    let hook = metrics.retry_hook();
    let error = HandlerError::transient("db away");
    hook(&request(0), 1, &error, Duration::from_millis(100));
    hook(&request(0), 2, &error, Duration::from_millis(200));
    assert_eq!(metrics.snapshot().retried, 2);
}

#[tokio::test(start_paused = true)]
async fn prometheus_text_has_every_family_in_the_exposition_format() {
    let metrics = BusMetrics::new();
    let mut service = MetricsLayer::new(metrics.clone()).layer(odd_ones_fail());
    for n in 0..3 {
        let _ = service.ready().await.unwrap().call(request(n)).await;
    }
    metrics.record_retry();
    metrics.record_parked();
    metrics.set_lag("orders", "billing", Some(42));
    metrics.set_lag("we\"ird\\topic\nname", "g", Some(1));
    metrics.observe_latency(Duration::from_millis(30));

    let mut text = String::new();
    metrics.render_prometheus(&mut text);

    for line in [
        "# TYPE cairn_bus_messages_received_total counter",
        "cairn_bus_messages_received_total 3",
        "cairn_bus_messages_handled_total 2",
        "cairn_bus_messages_failed_total 1",
        "cairn_bus_messages_retried_total 1",
        "cairn_bus_messages_parked_total 1",
        "# TYPE cairn_bus_messages_in_flight gauge",
        "cairn_bus_messages_in_flight 0",
        "# TYPE cairn_bus_handler_duration_seconds histogram",
        "cairn_bus_handler_duration_seconds_bucket{le=\"0.00005\"} 3",
        "cairn_bus_handler_duration_seconds_bucket{le=\"0.025\"} 3",
        "cairn_bus_handler_duration_seconds_bucket{le=\"0.05\"} 4",
        "cairn_bus_handler_duration_seconds_bucket{le=\"10\"} 4",
        "cairn_bus_handler_duration_seconds_bucket{le=\"+Inf\"} 4",
        "cairn_bus_handler_duration_seconds_sum 0.03",
        "cairn_bus_handler_duration_seconds_count 4",
        "# TYPE cairn_bus_consumer_lag gauge",
        "cairn_bus_consumer_lag{topic=\"orders\",group=\"billing\"} 42",
        "cairn_bus_consumer_lag{topic=\"we\\\"ird\\\\topic\\nname\",group=\"g\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(line)),
            "no line {line:?} in\n{text}"
        );
    }

    // Every sample line is `name[{labels}] value` with a number as value, and every
    // family is announced by HELP and TYPE before its samples.
    let mut announced = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            announced.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            announced
                .iter()
                .any(|family| name.starts_with(family.as_str())),
            "{name} before its TYPE"
        );
    }
    assert_eq!(announced.len(), 8);

    // Bucket counts never decrease.
    let buckets: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("cairn_bus_handler_duration_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), LATENCY_BUCKETS_MICROS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
}
