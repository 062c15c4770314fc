//! The two shapes of an aggregate: a [`Decider`] (plain functions over a state) and an
//! [`Aggregate`] (methods on the state), and [`AggregateDecider`], which turns the second
//! into the first so everything else only deals with deciders.

use std::fmt::Debug;
use std::marker::PhantomData;

use crate::Event;

/// An aggregate written as a decider: which events a command causes, and how an event
/// changes the state. Both are plain functions, so they are tested without any store.
///
/// Each aggregate instance lives in its own stream, `{CATEGORY}-{id}`.
///
/// # Examples
///
/// ```
/// use cairn_es::Decider;
/// # use cairn_es::{DecodeError, EncodeError, Event, EventType};
/// # #[derive(Debug, Clone, PartialEq)]
/// # enum CounterEvent { Incremented }
/// # impl Event for CounterEvent {
/// #     fn event_types() -> &'static [EventType] { &[EventType { name: "Incremented", version: 1 }] }
/// #     fn event_type(&self) -> EventType { Self::event_types()[0] }
/// #     fn encode(&self) -> Result<serde_json::Value, EncodeError> { Ok(serde_json::json!({})) }
/// #     fn decode(t: &str, _: serde_json::Value) -> Result<Self, DecodeError> {
/// #         if t == "Incremented" { Ok(Self::Incremented) } else { Err(DecodeError::UnknownType(t.into())) }
/// #     }
/// # }
///
/// struct Counter;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("the counter is full")]
/// struct Full;
///
/// impl Decider for Counter {
///     const CATEGORY: &'static str = "counter";
///     type State = u32;
///     type Command = ();
///     type Event = CounterEvent;
///     type Error = Full;
///
///     fn decide(count: &u32, _: &()) -> Result<Vec<CounterEvent>, Full> {
///         if *count >= 3 { Err(Full) } else { Ok(vec![CounterEvent::Incremented]) }
///     }
///
///     fn evolve(count: u32, _: &CounterEvent) -> u32 {
///         count + 1
///     }
/// }
///
/// assert!(Counter::decide(&3, &()).is_err());
/// ```
pub trait Decider: Send + Sync + 'static {
    /// The category of this aggregate's streams: instance `42` lives in `{CATEGORY}-42`.
    /// It must be a valid start of a stream name without `-`.
    const CATEGORY: &'static str;
    /// What the aggregate remembers; [`Default`] is the state before any event.
    type State: Default + Clone + Send + Sync + 'static;
    /// What it is asked to do.
    type Command: Send + Sync + 'static;
    /// What it records.
    type Event: Event + Clone;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The events `command` causes in `state`, or why it is refused. Must not have side
    /// effects: on a conflict the repository calls it again on the newer state.
    ///
    /// # Errors
    ///
    /// The domain's reason for refusing the command.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    /// The state after `event`.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
}

/// An aggregate written with methods on its state, for those who prefer them. Use it
/// wherever a [`Decider`] is expected through [`AggregateDecider`].
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    /// The category of this aggregate's streams (see [`Decider::CATEGORY`]).
    const CATEGORY: &'static str;
    /// What it is asked to do.
    type Command: Send + Sync + 'static;
    /// What it records.
    type Event: Event + Clone;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The events `command` causes, or why it is refused.
    ///
    /// # Errors
    ///
    /// The domain's reason for refusing the command.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Folds `event` into the state.
    fn apply(&mut self, event: &Self::Event);
}

/// The [`Decider`] of an [`Aggregate`].
pub struct AggregateDecider<A>(PhantomData<fn() -> A>);

impl<A> Debug for AggregateDecider<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AggregateDecider")
    }
}

impl<A: Aggregate> Decider for AggregateDecider<A> {
    const CATEGORY: &'static str = A::CATEGORY;
    type State = A;
    type Command = A::Command;
    type Event = A::Event;
    type Error = A::Error;

    fn decide(state: &A, command: &A::Command) -> Result<Vec<A::Event>, A::Error> {
        state.handle(command)
    }

    fn evolve(mut state: A, event: &A::Event) -> A {
        state.apply(event);
        state
    }
}
