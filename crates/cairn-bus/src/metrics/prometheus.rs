//! The Prometheus text exposition format (version 0.0.4) of [`BusMetrics`].

use std::fmt::{self, Write};

use super::registry::LATENCY_BUCKETS_MICROS;
use super::{BusMetrics, MetricsSnapshot};

impl BusMetrics {
    /// Appends the metrics to `out` in the Prometheus text exposition format, as a
    /// `/metrics` endpoint serves them:
    ///
    /// | metric | type |
    /// |---|---|
    /// | `cairn_bus_messages_received_total` | counter |
    /// | `cairn_bus_messages_handled_total` | counter |
    /// | `cairn_bus_messages_failed_total` | counter |
    /// | `cairn_bus_messages_retried_total` | counter |
    /// | `cairn_bus_messages_parked_total` | counter |
    /// | `cairn_bus_messages_in_flight` | gauge |
    /// | `cairn_bus_handler_duration_seconds` | histogram |
    /// | `cairn_bus_consumer_lag{topic, group}` | gauge |
    pub fn render_prometheus(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = write_prometheus(&self.snapshot(), out);
    }
}

fn write_prometheus(snapshot: &MetricsSnapshot, out: &mut String) -> fmt::Result {
    let counters = [
        (
            "cairn_bus_messages_received_total",
            "Messages that entered the handler stack.",
            snapshot.received,
        ),
        (
            "cairn_bus_messages_handled_total",
            "Messages handled successfully.",
            snapshot.handled,
        ),
        (
            "cairn_bus_messages_failed_total",
            "Messages whose handling ended in an error.",
            snapshot.failed,
        ),
        (
            "cairn_bus_messages_retried_total",
            "Handler attempts that failed and were retried.",
            snapshot.retried,
        ),
        (
            "cairn_bus_messages_parked_total",
            "Messages parked as dead letters.",
            snapshot.parked,
        ),
    ];
    for (name, help, value) in counters {
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} counter")?;
        writeln!(out, "{name} {value}")?;
    }

    let name = "cairn_bus_messages_in_flight";
    writeln!(out, "# HELP {name} Messages in the handler stack now.")?;
    writeln!(out, "# TYPE {name} gauge")?;
    writeln!(out, "{name} {}", snapshot.in_flight)?;

    let name = "cairn_bus_handler_duration_seconds";
    let latency = &snapshot.latency;
    writeln!(
        out,
        "# HELP {name} Time from a message entering the handler stack to its result."
    )?;
    writeln!(out, "# TYPE {name} histogram")?;
    let cumulative = latency.cumulative();
    for (bound, count) in LATENCY_BUCKETS_MICROS.iter().zip(&cumulative) {
        // Exact in f64, and printed without an exponent: 0.00005, 0.25, 10.
        let seconds = *bound as f64 / 1e6;
        writeln!(out, "{name}_bucket{{le=\"{seconds}\"}} {count}")?;
    }
    writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", latency.count)?;
    writeln!(out, "{name}_sum {}", latency.sum.as_secs_f64())?;
    writeln!(out, "{name}_count {}", latency.count)?;

    let name = "cairn_bus_consumer_lag";
    writeln!(
        out,
        "# HELP {name} Messages a consumer group has yet to handle on a topic."
    )?;
    writeln!(out, "# TYPE {name} gauge")?;
    for lag in &snapshot.lag {
        out.push_str(name);
        out.push_str("{topic=\"");
        escape_label(&lag.topic, out);
        out.push_str("\",group=\"");
        escape_label(&lag.group, out);
        writeln!(out, "\"}} {}", lag.lag)?;
    }
    Ok(())
}

/// Appends a label value with `\`, `"` and line feeds escaped, as the format requires.
fn escape_label(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
