//! [`Report`]: the outcome of every case of one run of the suite.

use std::fmt;
use std::time::Duration;

use crate::failure::Failure;

/// The outcome of one case.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) name: &'static str,
    pub(crate) result: Result<(), Failure>,
    pub(crate) elapsed: Duration,
}

/// What [`check_all`](crate::check_all) found: every case, passed or failed, in the order
/// they ran.
#[derive(Debug, Clone)]
pub struct Report {
    pub(crate) outcomes: Vec<Outcome>,
}

impl Report {
    /// The failing cases and why, in the order they ran.
    pub fn failures(&self) -> Vec<(&'static str, &Failure)> {
        self.outcomes
            .iter()
            .filter_map(|outcome| match &outcome.result {
                Ok(()) => None,
                Err(failure) => Some((outcome.name, failure)),
            })
            .collect()
    }

    /// Whether the case `name` ran and passed.
    pub fn passed(&self, name: &str) -> bool {
        self.outcomes
            .iter()
            .any(|outcome| outcome.name == name && outcome.result.is_ok())
    }

    /// Whether the case `name` ran and failed.
    pub fn failed(&self, name: &str) -> bool {
        self.outcomes
            .iter()
            .any(|outcome| outcome.name == name && outcome.result.is_err())
    }

    /// The names of the cases that ran, in order.
    pub fn case_names(&self) -> Vec<&'static str> {
        self.outcomes.iter().map(|outcome| outcome.name).collect()
    }

    /// Panics with every failing case and its message, unless all passed.
    ///
    /// # Panics
    ///
    /// When any case failed.
    pub fn assert_passed(&self) {
        let failures = self.failures();
        if !failures.is_empty() {
            panic!("{self}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        writeln!(
            f,
            "conformance: {} of {} cases passed",
            self.outcomes.len() - failures.len(),
            self.outcomes.len()
        )?;
        for outcome in &self.outcomes {
            let verdict = if outcome.result.is_ok() {
                "ok  "
            } else {
                "FAIL"
            };
            writeln!(f, "  {verdict} {} ({:?})", outcome.name, outcome.elapsed)?;
        }
        for (name, failure) in failures {
            writeln!(f, "\n--- {name} failed:\n{failure}")?;
        }
        Ok(())
    }
}
