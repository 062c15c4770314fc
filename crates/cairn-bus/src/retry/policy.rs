//! [`RetryPolicy`]: how many attempts, how long to wait between them, and which errors are
//! worth another attempt.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;

use crate::handler::{HandlerError, Incoming};

/// Decides whether an error is worth another attempt.
type Classifier = dyn Fn(&HandlerError) -> bool + Send + Sync;

/// Told about each retry before its wait: the request, the attempt that just failed (from
/// 1), its error and the wait chosen.
type RetryHook = dyn Fn(&Incoming, u32, &HandlerError, Duration) + Send + Sync;

/// How the wait before a retry is spread around the exponential backoff, so that many
/// consumers failing together do not all come back at the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Jitter {
    /// Wait exactly the backoff.
    None,
    /// Wait a uniformly random time between zero and the backoff ("full jitter").
    Full,
    /// Wait the backoff times a uniformly random factor in `1 ± fraction`; the fraction is
    /// clamped to `0.0..=1.0` (a NaN counts as zero).
    Proportional(f64),
}

impl Default for Jitter {
    /// ±20 %.
    fn default() -> Self {
        Self::Proportional(0.2)
    }
}

/// The retry middleware's policy: attempts, exponential backoff with jitter, and the
/// classification of errors into retryable and permanent.
///
/// The wait after failed attempt `n` (from 1) is `initial_backoff × multiplierⁿ⁻¹`, capped
/// at `max_backoff`, then jittered; `max_backoff` is a hard ceiling, jitter included. The
/// defaults are 5 attempts (the first included), 100 ms initial backoff, a multiplier of 2,
/// a 30 s ceiling, ±20 % jitter, and [`HandlerError::is_retryable`] as the classifier.
///
/// Cheap to clone: the classifier and the hook are shared.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cairn_bus::retry::{Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::default()
///     .with_max_attempts(3)
///     .with_initial_backoff(Duration::from_millis(50))
///     .with_jitter(Jitter::None);
/// assert_eq!(policy.backoff(1), Duration::from_millis(50));
/// assert_eq!(policy.backoff(2), Duration::from_millis(100));
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    multiplier: f64,
    max_backoff: Duration,
    jitter: Jitter,
    classifier: Option<Arc<Classifier>>,
    on_retry: Option<Arc<RetryHook>>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(30),
            jitter: Jitter::default(),
            classifier: None,
            on_retry: None,
        }
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("multiplier", &self.multiplier)
            .field("max_backoff", &self.max_backoff)
            .field("jitter", &self.jitter)
            .field("custom_classifier", &self.classifier.is_some())
            .field("on_retry", &self.on_retry.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// The default policy (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many attempts are made in all, the first included; zero counts as one.
    #[must_use]
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Sets the wait after the first failed attempt, before jitter.
    #[must_use]
    pub fn with_initial_backoff(mut self, initial_backoff: Duration) -> Self {
        self.initial_backoff = initial_backoff;
        self
    }

    /// Sets the factor the backoff grows by after each failed attempt; values below 1.0 and
    /// values that are not finite count as 1.0 (a constant backoff).
    #[must_use]
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() && multiplier >= 1.0 {
            multiplier
        } else {
            1.0
        };
        self
    }

    /// Sets the ceiling of every wait, jitter included.
    #[must_use]
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// Sets how the waits are jittered.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = match jitter {
            Jitter::Proportional(fraction) if fraction.is_nan() => Jitter::Proportional(0.0),
            Jitter::Proportional(fraction) => Jitter::Proportional(fraction.clamp(0.0, 1.0)),
            other => other,
        };
        self
    }

    /// Replaces the classification of errors: `retryable(error)` says whether another
    /// attempt may help. The default is [`HandlerError::is_retryable`].
    #[must_use]
    pub fn retry_if(
        mut self,
        retryable: impl Fn(&HandlerError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.classifier = Some(Arc::new(retryable));
        self
    }

    /// Sets a hook called before each retry's wait with the request, the attempt that just
    /// failed (from 1), its error and the wait chosen; metrics count retries with it (see
    /// [`BusMetrics::retry_hook`](crate::metrics::BusMetrics::retry_hook)).
    ///
    /// The hook runs on the message's task, inside its poll: it should be quick.
    #[must_use]
    pub fn on_retry(
        mut self,
        hook: impl Fn(&Incoming, u32, &HandlerError, Duration) + Send + Sync + 'static,
    ) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// How many attempts are made in all, the first included (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Whether `error` is worth another attempt, by the classifier in force.
    pub fn is_retryable(&self, error: &HandlerError) -> bool {
        match &self.classifier {
            Some(classifier) => classifier(error),
            None => error.is_retryable(),
        }
    }

    /// The wait after failed attempt `failed_attempt` (from 1) before jitter:
    /// `initial_backoff × multiplier^(failed_attempt − 1)`, capped at `max_backoff`.
    pub fn backoff(&self, failed_attempt: u32) -> Duration {
        if self.initial_backoff.is_zero() {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let nanos = self.initial_backoff.as_nanos() as f64 * self.multiplier.powi(exponent);
        self.cap(nanos)
    }

    /// The wait after failed attempt `failed_attempt` (from 1): the [`backoff`](Self::backoff)
    /// with jitter drawn from the thread's random generator.
    pub fn delay(&self, failed_attempt: u32) -> Duration {
        let unit = match self.jitter {
            Jitter::None => 0.5,
            Jitter::Full | Jitter::Proportional(_) => rand::rng().random::<f64>(),
        };
        self.jittered(self.backoff(failed_attempt), unit)
    }

    /// Applies the jitter to `backoff` with `unit` in `0.0..=1.0` standing for the random
    /// draw: 0.0 gives the shortest wait the jitter allows, 1.0 the longest.
    pub(crate) fn jittered(&self, backoff: Duration, unit: f64) -> Duration {
        let nanos = backoff.as_nanos() as f64;
        match self.jitter {
            Jitter::None => backoff,
            Jitter::Full => self.cap(nanos * unit),
            Jitter::Proportional(fraction) => {
                self.cap(nanos * (1.0 - fraction + 2.0 * fraction * unit))
            }
        }
    }

    /// `nanos` as a duration, at most `max_backoff`.
    fn cap(&self, nanos: f64) -> Duration {
        let max = self.max_backoff.as_nanos() as f64;
        if nanos.is_nan() || nanos >= max {
            self.max_backoff
        } else {
            // Below `max_backoff`, so it fits in a u64 of nanoseconds for any sane ceiling;
            // the cast saturates otherwise.
            Duration::from_nanos(nanos.max(0.0).round() as u64)
        }
    }

    /// Calls the retry hook, if any.
    pub(crate) fn notify_retry(
        &self,
        request: &Incoming,
        failed_attempt: u32,
        error: &HandlerError,
        delay: Duration,
    ) {
        if let Some(hook) = &self.on_retry {
            hook(request, failed_attempt, error, delay);
        }
    }
}
