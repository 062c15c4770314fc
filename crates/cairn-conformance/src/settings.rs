//! What a run of the suite is parameterised by: the random seed and the number of random
//! trials, read from the environment.
//!
//! - `CAIRN_CONFORMANCE_SEED` (a `u64`) replays a run; without it each run draws a seed and
//!   prints it with any failure.
//! - `CAIRN_CONFORMANCE_CASES` sets how many random trials the randomized cases run
//!   (default [`DEFAULT_RANDOM_CASES`]).

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::failure::Failure;

/// The environment variable that fixes the seed.
pub const SEED_VAR: &str = "CAIRN_CONFORMANCE_SEED";

/// The environment variable that sets the number of random trials.
pub const CASES_VAR: &str = "CAIRN_CONFORMANCE_CASES";

/// Random trials per randomized case when [`CASES_VAR`] is not set: enough to see many
/// hand-overs, few enough that the whole suite runs in seconds on the memory store.
pub const DEFAULT_RANDOM_CASES: usize = 8;

/// The parameters of one run, handed to every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The run's seed, as printed and as [`SEED_VAR`] takes it.
    pub(crate) seed: u64,
    /// Random trials per randomized case.
    pub(crate) random_cases: usize,
}

impl Settings {
    /// Reads the environment; draws a seed when none is set.
    pub(crate) fn from_env() -> Result<Self, Failure> {
        let seed = match std::env::var(SEED_VAR) {
            Ok(text) => text.trim().parse().map_err(|_| {
                Failure::new(format!(
                    "{SEED_VAR}={text:?} is not an unsigned 64-bit number"
                ))
            })?,
            Err(_) => rand::random(),
        };
        let random_cases = match std::env::var(CASES_VAR) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| Failure::new(format!("{CASES_VAR}={text:?} is not a count")))?,
            Err(_) => DEFAULT_RANDOM_CASES,
        };
        Ok(Self { seed, random_cases })
    }

    /// A generator for the case `name`: the same seed gives every case the same draws,
    /// whether it runs alone or with the others.
    pub(crate) fn rng(&self, name: &str) -> StdRng {
        // FNV-1a over the case name, mixed into the run's seed.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        StdRng::seed_from_u64(self.seed ^ hash)
    }

    /// The note added to every failure, saying how to replay the run.
    pub(crate) fn replay_note(&self) -> String {
        format!(
            "(seed {seed}: set {SEED_VAR}={seed} to replay; {} random trials)",
            self.random_cases,
            seed = self.seed
        )
    }
}
