//! Latency samples and their percentiles, from a sorted vector: exact, and small enough
//! for the sample counts a run takes (one `u64` per append).

use std::time::Duration;

use serde::Serialize;

/// Latencies recorded by a workload, in nanoseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(Vec<u64>);

impl Samples {
    /// Room for `capacity` samples.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self(Vec::with_capacity(capacity))
    }

    /// Records one latency.
    pub(crate) fn record(&mut self, latency: Duration) {
        self.0
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Takes every sample of `other`.
    pub(crate) fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// The number of samples.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The percentiles of the samples (all zero when there are none).
    pub(crate) fn summary(mut self) -> Percentiles {
        self.0.sort_unstable();
        let samples = &self.0;
        let at = |quantile: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            // The smallest sample with at least `quantile` of the samples at or below it.
            let rank = (quantile * samples.len() as f64).ceil() as usize;
            let index = rank.clamp(1, samples.len()) - 1;
            micros(samples.get(index).copied().unwrap_or(0))
        };
        let mean = if samples.is_empty() {
            0.0
        } else {
            micros(samples.iter().sum::<u64>() / samples.len() as u64)
        };
        Percentiles {
            samples: samples.len() as u64,
            mean_us: mean,
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: micros(samples.last().copied().unwrap_or(0)),
        }
    }
}

fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 1000.0 * 10.0).round() / 10.0
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    /// How many samples they summarise.
    pub(crate) samples: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples = Samples::default();
        for micros in 1..=1000u64 {
            samples.record(Duration::from_micros(micros));
        }
        let summary = samples.summary();
        assert_eq!(summary.samples, 1000);
        assert_eq!(summary.p50_us, 500.0);
        assert_eq!(summary.p99_us, 990.0);
        assert_eq!(summary.p999_us, 999.0);
        assert_eq!(summary.max_us, 1000.0);
        assert_eq!(summary.mean_us, 500.5);
    }

    #[test]
    fn no_samples_give_zeros() {
        let summary = Samples::default().summary();
        assert_eq!(summary.samples, 0);
        assert_eq!(summary.p99_us, 0.0);
    }
}
