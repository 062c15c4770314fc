//! given / when / then for deciders, and the same for whole command flows through a
//! [`Repository`] on the in-memory store.
//!
//! The assertions panic like `assert_eq!` does, with a message that shows the history,
//! the command, and the expected and actual events side by side.
//!
//! # Examples
//!
//! ```
//! use cairn_es::Decider;
//! use cairn_es::testkit::given;
//! # use cairn_es::{DecodeError, EncodeError, Event, EventType};
//! # #[derive(Debug, Clone, PartialEq)]
//! # enum Door { Opened, Closed }
//! # impl Event for Door {
//! #     fn event_types() -> &'static [EventType] {
//! #         &[EventType { name: "Opened", version: 1 }, EventType { name: "Closed", version: 1 }]
//! #     }
//! #     fn event_type(&self) -> EventType {
//! #         Self::event_types()[match self { Door::Opened => 0, Door::Closed => 1 }]
//! #     }
//! #     fn encode(&self) -> Result<serde_json::Value, EncodeError> { Ok(serde_json::json!({})) }
//! #     fn decode(t: &str, _: serde_json::Value) -> Result<Self, DecodeError> {
//! #         match t { "Opened" => Ok(Door::Opened), "Closed" => Ok(Door::Closed), _ => Err(DecodeError::UnknownType(t.into())) }
//! #     }
//! # }
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("already open")]
//! # struct AlreadyOpen;
//! # struct DoorDecider;
//! # impl Decider for DoorDecider {
//! #     const CATEGORY: &'static str = "door";
//! #     type State = bool;
//! #     type Command = ();
//! #     type Event = Door;
//! #     type Error = AlreadyOpen;
//! #     fn decide(open: &bool, _: &()) -> Result<Vec<Door>, AlreadyOpen> {
//! #         if *open { Err(AlreadyOpen) } else { Ok(vec![Door::Opened]) }
//! #     }
//! #     fn evolve(_: bool, event: &Door) -> bool { *event == Door::Opened }
//! # }
//! given::<DoorDecider>([]).when(()).then([Door::Opened]);
//! given::<DoorDecider>([Door::Opened]).when(()).then_error(AlreadyOpen);
//! given::<DoorDecider>([Door::Opened, Door::Closed]).when(()).then([Door::Opened]);
//! ```

use std::fmt::{Debug, Write as _};
use std::sync::Arc;

use cairn_core::{EventStore, ExpectedRevision};
use cairn_memory::MemoryStore;

use crate::{CommandContext, CommandError, Decider, Executed, Repository, codec};

/// Starts a decider test from the events already in the aggregate's history.
pub fn given<D: Decider>(history: impl IntoIterator<Item = D::Event>) -> Given<D> {
    Given {
        history: history.into_iter().collect(),
    }
}

/// A decider test's history.
#[derive(Debug)]
pub struct Given<D: Decider> {
    history: Vec<D::Event>,
}

impl<D: Decider> Given<D> {
    /// Decides `command` on the state the history leads to.
    pub fn when(self, command: D::Command) -> Then<D> {
        let state = self
            .history
            .iter()
            .fold(D::State::default(), |state, event| D::evolve(state, event));
        let outcome = D::decide(&state, &command);
        Then {
            history: self.history,
            command,
            outcome,
        }
    }
}

/// A decided command, to check.
pub struct Then<D: Decider> {
    history: Vec<D::Event>,
    command: D::Command,
    outcome: Result<Vec<D::Event>, D::Error>,
}

impl<D: Decider> Then<D>
where
    D::Event: PartialEq + Debug,
    D::Command: Debug,
    D::Error: Debug,
{
    /// Asserts that the command caused exactly `expected`, in order.
    ///
    /// # Panics
    ///
    /// When it caused other events or was refused, showing both.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match &self.outcome {
            Ok(actual) if *actual == expected => {}
            Ok(actual) => panic!(
                "{}",
                self.report(
                    &events_text("expected events", &expected),
                    &events_diff(&expected, actual)
                )
            ),
            Err(error) => panic!(
                "{}",
                self.report(
                    &events_text("expected events", &expected),
                    &format!("but the command was refused: {error:?}\n")
                )
            ),
        }
    }

    /// Asserts that the command was refused with `expected`.
    ///
    /// # Panics
    ///
    /// When it was refused otherwise, or caused events.
    #[track_caller]
    pub fn then_error(self, expected: D::Error)
    where
        D::Error: PartialEq,
    {
        let wanted = format!("expected refusal: {expected:?}\n");
        match &self.outcome {
            Err(error) if *error == expected => {}
            Err(error) => panic!(
                "{}",
                self.report(&wanted, &format!("actual refusal:   {error:?}\n"))
            ),
            Ok(events) => panic!(
                "{}",
                self.report(&wanted, &events_text("but the command caused", events))
            ),
        }
    }

    /// Asserts that the command was refused with an error for which `check` holds.
    ///
    /// # Panics
    ///
    /// When it was accepted, or `check` fails.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&D::Error) -> bool) {
        match &self.outcome {
            Err(error) if check(error) => {}
            Err(error) => panic!(
                "{}",
                self.report(
                    "expected a refusal passing the check\n",
                    &format!("actual refusal: {error:?}\n")
                )
            ),
            Ok(events) => panic!(
                "{}",
                self.report(
                    "expected a refusal\n",
                    &events_text("but the command caused", events)
                )
            ),
        }
    }

    /// The raw outcome, for checks of one's own.
    pub fn outcome(self) -> Result<Vec<D::Event>, D::Error> {
        self.outcome
    }

    fn report(&self, expected: &str, actual: &str) -> String {
        let mut text = String::from("decider test failed\n");
        text.push_str(&events_text("given", &self.history));
        let _ = writeln!(text, "when: {:?}", self.command);
        text.push_str(expected);
        text.push_str(actual);
        text
    }
}

fn events_text<E: Debug>(title: &str, events: &[E]) -> String {
    let mut text = format!("{title}:");
    if events.is_empty() {
        text.push_str(" (none)\n");
        return text;
    }
    text.push('\n');
    for (n, event) in events.iter().enumerate() {
        let _ = writeln!(text, "  {n}: {event:?}");
    }
    text
}

fn events_diff<E: Debug + PartialEq>(expected: &[E], actual: &[E]) -> String {
    let mut text = events_text("actual events", actual);
    let first = expected
        .iter()
        .zip(actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    match (expected.get(first), actual.get(first)) {
        (Some(e), Some(a)) => {
            let _ = writeln!(
                text,
                "first difference at {first}:\n  expected {e:?}\n  actual   {a:?}"
            );
        }
        (Some(e), None) => {
            let _ = writeln!(text, "missing from {first} on, first: {e:?}");
        }
        (None, Some(a)) => {
            let _ = writeln!(text, "unexpected from {first} on, first: {a:?}");
        }
        (None, None) => {}
    }
    text
}

/// A whole-flow test: commands run through a [`Repository`] on a fresh in-memory store,
/// as they would in production (load, decide, append, metadata).
///
/// # Examples
///
/// See `examples/bank` and its tests.
pub struct TestFlow<D: Decider> {
    repository: Repository<D, MemoryStore>,
}

impl<D: Decider> Default for TestFlow<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Decider> TestFlow<D> {
    /// A flow on an empty in-memory store.
    pub fn new() -> Self {
        Self {
            repository: Repository::builder(Arc::new(MemoryStore::new())).build_unchecked(),
        }
    }

    /// The repository the flow runs commands through.
    pub fn repository(&self) -> &Repository<D, MemoryStore> {
        &self.repository
    }

    /// Records `history` in aggregate `id`'s stream, as if earlier commands had.
    ///
    /// # Panics
    ///
    /// When the events cannot be written (an invalid id, an unencodable event).
    pub async fn given(self, id: &str, history: impl IntoIterator<Item = D::Event>) -> Self {
        let stream = self.repository.stream_of(id).expect("a valid aggregate id");
        let metadata = CommandContext::new()
            .metadata("00-00000000000000000000000000000001-0000000000000001-01");
        let data: Vec<_> = history
            .into_iter()
            .map(|event| codec::encode(&event, &metadata).expect("an encodable event"))
            .collect();
        if !data.is_empty() {
            self.repository
                .store()
                .append(&stream, ExpectedRevision::Any, data)
                .await
                .expect("the in-memory store accepts the history");
        }
        self
    }

    /// Runs `command` on aggregate `id` through the repository.
    pub async fn when(&self, id: &str, command: D::Command) -> FlowThen<D> {
        FlowThen {
            outcome: self.repository.execute(id, command).await,
        }
    }
}

/// The outcome of one command of a [`TestFlow`], to check.
pub struct FlowThen<D: Decider> {
    outcome: Result<Executed<D>, CommandError<D::Error>>,
}

impl<D: Decider> FlowThen<D>
where
    D::Event: PartialEq + Debug,
    D::Error: Debug,
{
    /// Asserts that the command recorded exactly `expected`.
    ///
    /// # Panics
    ///
    /// When it recorded other events or failed, showing both.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = D::Event>) -> Executed<D> {
        let expected: Vec<D::Event> = expected.into_iter().collect();
        match self.outcome {
            Ok(executed) if executed.events == expected => executed,
            Ok(executed) => panic!(
                "command flow test failed\n{}{}",
                events_text("expected events", &expected),
                events_diff(&expected, &executed.events)
            ),
            Err(error) => panic!(
                "command flow test failed\n{}but the command failed: {error:?}",
                events_text("expected events", &expected)
            ),
        }
    }

    /// Asserts that the command failed, and `check` holds for the error.
    ///
    /// # Panics
    ///
    /// When it succeeded or `check` fails.
    #[track_caller]
    pub fn then_error(self, check: impl FnOnce(&CommandError<D::Error>) -> bool) {
        match self.outcome {
            Err(error) if check(&error) => {}
            Err(error) => {
                panic!("command flow test failed\nthe error did not pass the check: {error:?}")
            }
            Ok(executed) => panic!(
                "command flow test failed\nexpected an error\n{}",
                events_text("but the command recorded", &executed.events)
            ),
        }
    }

    /// The raw outcome.
    pub fn outcome(self) -> Result<Executed<D>, CommandError<D::Error>> {
        self.outcome
    }
}
