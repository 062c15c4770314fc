//! `#[derive(Event)]`: the `cairn_es::Event` implementation of a domain event enum.
//!
//! Use it through `cairn-es`, which re-exports it (feature `derive`, on by default); the
//! generated code names `::cairn_es` and reaches serde through it, so a domain crate
//! depends on `cairn-es` (and on `serde` only if its own payload types derive serde).
//!
//! Each variant of the enum is one **event type** with:
//!
//! - a **stable type name**, stored with every event: the variant's name as written, or
//!   the one given by `#[event(name = "...")]`. Fix the name before the first event is
//!   stored, and the variant can be renamed freely afterwards;
//! - a **schema version**, 1 or more: `#[event(version = N)]` on the variant, or on the
//!   enum as the default of every variant (a variant's own wins). Raise it when the
//!   payload changes shape, and register an upcaster from the old version.
//!
//! # Examples
//!
//! ```
//! use cairn_es::Event;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! pub struct Address {
//!     pub city: String,
//! }
//!
//! #[derive(Debug, PartialEq, Event)]
//! #[event(version = 1)]
//! enum Account {
//!     // Type name "account.opened", version 1 (the enum's default).
//!     #[event(name = "account.opened")]
//!     Opened { owner: String },
//!     // Type name "Moved" (the variant's name), version 2.
//!     #[event(version = 2)]
//!     Moved(Address),
//!     // Type name "account.closed"; payload `{}`.
//!     #[event(name = "account.closed")]
//!     Closed,
//! }
//!
//! let event = Account::Opened { owner: "ada".to_owned() };
//! assert_eq!(event.event_type().name, "account.opened");
//! assert_eq!(Account::event_types().len(), 3);
//!
//! let payload = event.encode()?;
//! assert_eq!(payload, serde_json::json!({ "owner": "ada" }));
//! assert_eq!(Account::decode("account.opened", payload)?, event);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Attributes
//!
//! | where | attribute | meaning |
//! |-------|-----------|---------|
//! | enum | `#[event(version = N)]` | default schema version of every variant |
//! | variant | `#[event(name = "...")]` | the type name (default: the variant's name) |
//! | variant | `#[event(version = N)]` | the variant's schema version |
//! | field | `#[serde(...)]` | forwarded to the payload's serde code (`rename`, `default`, `skip_serializing_if`, `with`, `flatten`, ...) |
//!
//! Keys may share one attribute (`#[event(name = "a.b", version = 2)]`) or be split over
//! several. `#[serde(...)]` on the enum or on a variant is not read by this derive (a
//! `Serialize` derive of the same enum may still use it): type names come from
//! `#[event(name)]` only.
//!
//! # Payloads
//!
//! | variant | payload written | payload read |
//! |---------|-----------------|--------------|
//! | `Closed` | `{}` | any object, or `null` |
//! | `Moved(Address)` | the inner value's JSON | the inner value's JSON |
//! | `Opened { owner: String }` | an object of the fields | an object of the fields; unknown fields are ignored |
//!
//! Decoding maps an unknown type name to `DecodeError::UnknownType` and a payload that
//! does not fit to `DecodeError::Payload`; encoding failures become `EncodeError`.
//!
//! # Compile errors
//!
//! Mistakes are caught when the enum is compiled, each pointed at the tokens to change:
//! two variants with the same type name, a variant with no version (neither its own nor
//! the enum's), version 0 or one that does not fit in a `u32`, an empty type name or one
//! longer than 256 bytes or holding control characters, an unknown or repeated key,
//! a key given a literal of the wrong type, `#[event]` on a field, and a derive on a
//! struct or union.
//!
//! # Limitations
//!
//! - Generic enums (type, lifetime or const parameters) are refused: every stored event
//!   decodes to one concrete Rust type.
//! - Tuple variants carry exactly one field: `Moved(Address)` is accepted,
//!   `Moved(String, String)` and `Moved()` are refused, so that every payload is the JSON of
//!   one value (an object for all but newtypes of non-object types).
//! - The generated code names the crate `::cairn_es`: a crate that renames the `cairn-es`
//!   dependency cannot use the derive.

mod expand;
mod input;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `cairn_es::Event` for an enum: one event type per variant, with a stable
/// type name, a schema version and its JSON payload.
///
/// See the [crate documentation](crate) for the attributes, the payloads and the compile
/// errors.
#[proc_macro_derive(Event, attributes(event, serde))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match input::EventEnum::from_input(&input) {
        Ok(event_enum) => expand::expand(&event_enum).into(),
        Err(error) => error.into_compile_error().into(),
    }
}
