//! What a derived `Event` implementation does: type names and versions as declared, the
//! payload of each variant shape, round trips, typed errors, and `#[serde]` field
//! attributes.

use std::collections::BTreeMap;

use cairn_es::{DecodeError, EncodeError, Event, EventType};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    city: String,
    postcode: String,
}

/// One variant of every supported shape, names and versions from every source.
#[derive(Debug, Clone, PartialEq, Event)]
#[event(version = 1)]
enum Account {
    /// Unit, named by `name`, the enum's default version.
    #[event(name = "account.opened")]
    Opened,
    /// Named fields, its own version, the variant's name as type name.
    #[event(version = 3)]
    Deposited { amount: u64, memo: Option<String> },
    /// Newtype of a struct.
    #[event(name = "account.moved", version = 2)]
    Moved(Address),
    /// Newtype of a plain value.
    #[event(name = "account.renamed")]
    Renamed(String),
    /// Named fields, none of them.
    #[event(name = "account.frozen")]
    Frozen {},
    /// A raw identifier keeps its name without the `r#`.
    r#Closed { r#type: String },
}

fn every_account_event() -> Vec<Account> {
    vec![
        Account::Opened,
        Account::Deposited {
            amount: 250,
            memo: Some("salary".to_owned()),
        },
        Account::Moved(Address {
            city: "Lyon".to_owned(),
            postcode: "69001".to_owned(),
        }),
        Account::Renamed("Ada's savings".to_owned()),
        Account::Frozen {},
        Account::Closed {
            r#type: "by owner".to_owned(),
        },
    ]
}

fn event_type(name: &'static str, version: u32) -> EventType {
    EventType { name, version }
}

#[test]
fn event_types_list_every_variant_in_order_with_its_name_and_version() {
    assert_eq!(
        Account::event_types(),
        [
            event_type("account.opened", 1),
            event_type("Deposited", 3),
            event_type("account.moved", 2),
            event_type("account.renamed", 1),
            event_type("account.frozen", 1),
            event_type("Closed", 1),
        ]
    );
}

#[test]
fn each_event_has_the_type_of_its_variant() {
    let types: Vec<EventType> = every_account_event()
        .iter()
        .map(Event::event_type)
        .collect();
    assert_eq!(types, Account::event_types());
}

#[test]
fn every_variant_shape_survives_encode_then_decode() {
    for event in every_account_event() {
        let payload = event.encode().expect("every test event encodes");
        let decoded = Account::decode(event.event_type().name, payload.clone())
            .unwrap_or_else(|error| panic!("{payload} does not decode: {error}"));
        assert_eq!(decoded, event);
    }
}

#[test]
fn payloads_are_an_object_of_fields_the_inner_value_or_empty() {
    let payloads: Vec<Value> = every_account_event()
        .iter()
        .map(|event| event.encode().expect("every test event encodes"))
        .collect();
    assert_eq!(
        payloads,
        [
            json!({}),
            json!({ "amount": 250, "memo": "salary" }),
            json!({ "city": "Lyon", "postcode": "69001" }),
            json!("Ada's savings"),
            json!({}),
            json!({ "type": "by owner" }),
        ]
    );
}

#[test]
fn a_unit_variant_decodes_from_any_object_or_null() {
    for payload in [
        json!({}),
        json!({ "written": "by a later version" }),
        Value::Null,
    ] {
        let event = Account::decode("account.opened", payload).expect("a unit payload");
        assert_eq!(event, Account::Opened);
    }
}

#[test]
fn a_unit_variant_refuses_a_payload_that_is_not_an_object() {
    let error = Account::decode("account.opened", json!([1, 2])).unwrap_err();
    let DecodeError::Payload { event_type, reason } = error else {
        panic!("expected a payload error, got {error:?}");
    };
    assert_eq!(event_type, "account.opened");
    assert!(reason.contains("object"), "{reason}");
}

#[test]
fn fields_a_payload_does_not_know_are_ignored() {
    let payload = json!({ "amount": 5, "memo": null, "currency": "EUR" });
    let event = Account::decode("Deposited", payload).expect("extra fields are ignored");
    assert_eq!(
        event,
        Account::Deposited {
            amount: 5,
            memo: None
        }
    );
}

#[test]
fn an_unknown_type_name_is_an_unknown_type_error() {
    // The Rust name of a renamed variant is not its type name.
    for name in ["account.deleted", "Opened", "account.opened ", ""] {
        let error = Account::decode(name, json!({})).unwrap_err();
        assert!(
            matches!(&error, DecodeError::UnknownType(found) if found == name),
            "{name:?}: {error:?}"
        );
    }
}

#[test]
fn a_payload_that_does_not_fit_is_a_payload_error_naming_the_type() {
    let cases = [
        ("Deposited", json!({ "memo": "no amount" }), "amount"),
        ("Deposited", json!({ "amount": -1 }), "-1"),
        ("account.moved", json!({ "city": "Lyon" }), "postcode"),
        ("account.renamed", json!(42), "string"),
        ("account.frozen", json!(7), "fields of `Frozen`"),
        ("Closed", json!("closed"), "fields of `Closed`"),
    ];
    for (name, payload, expected) in cases {
        let error = Account::decode(name, payload.clone()).unwrap_err();
        let DecodeError::Payload { event_type, reason } = error else {
            panic!("{name} {payload}: expected a payload error, got {error:?}");
        };
        assert_eq!(event_type, name);
        assert!(
            reason.contains(expected),
            "{name} {payload}: {reason:?} does not mention {expected:?}"
        );
    }
}

mod stored_by_the_first_release {
    use cairn_es::Event;

    #[derive(Debug, Event)]
    pub(crate) enum Account {
        #[event(name = "account.deposited", version = 1)]
        Deposited { amount: u64 },
    }
}

mod read_by_a_later_release {
    use cairn_es::Event;

    /// The same event type, its variant renamed in Rust.
    #[derive(Debug, PartialEq, Event)]
    pub(crate) enum Account {
        #[event(name = "account.deposited", version = 1)]
        MoneyDeposited { amount: u64 },
    }
}

#[test]
fn renaming_a_variant_with_a_fixed_name_still_reads_old_events() {
    let old = stored_by_the_first_release::Account::Deposited { amount: 30 };
    let name = old.event_type().name;
    let payload = old.encode().expect("encodes");

    let new = read_by_a_later_release::Account::decode(name, payload).expect("decodes");
    assert_eq!(
        new,
        read_by_a_later_release::Account::MoneyDeposited { amount: 30 }
    );
    assert_eq!(
        read_by_a_later_release::Account::event_types(),
        stored_by_the_first_release::Account::event_types()
    );
}

/// Serialises a number as a string, to check that `with` sees the field's own type.
mod amount_as_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer>(amount: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(amount)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(D::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Event)]
#[event(version = 1)]
enum Ledger {
    Posted {
        #[serde(rename = "entryId")]
        entry_id: u64,
        #[serde(with = "amount_as_string")]
        amount: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
        #[serde(default = "default_currency", alias = "ccy")]
        currency: String,
        #[serde(skip)]
        cached_total: Option<u64>,
    },
    Reverted(#[serde(with = "amount_as_string")] u64),
}

fn default_currency() -> String {
    "EUR".to_owned()
}

#[test]
fn serde_attributes_on_fields_shape_the_payload() {
    let event = Ledger::Posted {
        entry_id: 7,
        amount: 1200,
        tags: Vec::new(),
        currency: "GBP".to_owned(),
        cached_total: Some(99),
    };
    let payload = event.encode().expect("encodes");
    assert_eq!(
        payload,
        json!({ "entryId": 7, "amount": "1200", "currency": "GBP" })
    );

    let decoded = Ledger::decode("Posted", payload).expect("decodes");
    assert_eq!(
        decoded,
        Ledger::Posted {
            entry_id: 7,
            amount: 1200,
            tags: Vec::new(),
            currency: "GBP".to_owned(),
            cached_total: None,
        }
    );

    let reverted = Ledger::Reverted(1200);
    assert_eq!(reverted.encode().expect("encodes"), json!("1200"));
    assert_eq!(
        Ledger::decode("Reverted", json!("1200")).expect("decodes"),
        reverted
    );
}

#[test]
fn serde_attributes_on_fields_read_defaults_and_aliases() {
    let decoded = Ledger::decode(
        "Posted",
        json!({ "entryId": 1, "amount": "5", "ccy": "CHF" }),
    )
    .expect("decodes");
    assert_eq!(
        decoded,
        Ledger::Posted {
            entry_id: 1,
            amount: 5,
            tags: Vec::new(),
            currency: "CHF".to_owned(),
            cached_total: None,
        }
    );
    let decoded =
        Ledger::decode("Posted", json!({ "entryId": 1, "amount": "5" })).expect("decodes");
    assert!(
        matches!(decoded, Ledger::Posted { ref currency, .. } if currency == "EUR"),
        "{decoded:?}"
    );

    let error = Ledger::decode("Posted", json!({ "entryId": 1, "amount": 5 })).unwrap_err();
    assert!(matches!(error, DecodeError::Payload { .. }), "{error:?}");
}

#[derive(Debug, Event)]
#[event(version = 1)]
enum Indexed {
    /// JSON objects need string keys: this one cannot be written.
    Built { index: BTreeMap<(u32, u32), u32> },
}

#[test]
fn a_payload_json_cannot_hold_is_an_encode_error_naming_the_type() {
    let event = Indexed::Built {
        index: BTreeMap::from([((1, 2), 3)]),
    };
    let error: EncodeError = event.encode().unwrap_err();
    assert_eq!(error.event_type, "Built");
    assert!(error.to_string().contains("Built"), "{error}");
}

#[test]
fn an_enum_declared_in_a_function_can_use_types_declared_beside_it() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Reading {
        celsius: i32,
    }

    #[derive(Debug, PartialEq, Event)]
    enum Sensor {
        #[event(name = "sensor.read", version = 4)]
        Read(Reading),
    }

    let event = Sensor::Read(Reading { celsius: -3 });
    assert_eq!(event.event_type(), event_type("sensor.read", 4));
    let payload = event.encode().expect("encodes");
    assert_eq!(
        Sensor::decode("sensor.read", payload).expect("decodes"),
        event
    );
}
