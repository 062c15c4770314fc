//! How Cairn's names become JetStream's: a topic is the stream `{namespace}-{topic}`
//! holding the one subject `{namespace}.{topic}`; a group is the durable consumer of that
//! name on the stream. Names are checked here, before anything reaches the server.

use cairn_bus::TransportError;

/// The longest topic, group or namespace accepted. JetStream allows 255 bytes for a
/// stream or consumer name, and the stream name is the namespace and the topic together;
/// names also become file names in the server's store directory.
pub const MAX_NAME_LEN: usize = 100;

/// Checks a topic, group or namespace: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-`
/// or `_`, so that it is a valid stream name, consumer name and subject token at once.
///
/// # Errors
///
/// [`TransportError::Invalid`] naming `what` and the rule broken.
pub fn check(what: &'static str, name: &str) -> Result<(), TransportError> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_NAME_LEN {
        format!("{name:?} is {} bytes, more than {MAX_NAME_LEN}", name.len())
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        format!("{name:?} holds {bad:?}; only ASCII letters, digits, '-' and '_' are allowed")
    } else {
        return Ok(());
    };
    Err(TransportError::Invalid { what, reason })
}

/// The JetStream stream holding `topic`.
pub(crate) fn stream(namespace: &str, topic: &str) -> String {
    format!("{namespace}-{topic}")
}

/// The subject messages of `topic` are published on.
pub(crate) fn subject(namespace: &str, topic: &str) -> String {
    format!("{namespace}.{topic}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_letters_digits_dashes_and_underscores_pass() {
        for name in ["a", "orders", "cairn-topic-0193abc", "Group_1"] {
            assert!(check("topic", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn names_that_would_break_a_subject_or_a_stream_name_are_invalid() {
        for name in [
            "",
            "a.b",
            "a*",
            "a>",
            "a b",
            "é",
            &"x".repeat(MAX_NAME_LEN + 1),
        ] {
            let error = check("group", name).unwrap_err();
            assert!(
                matches!(error, TransportError::Invalid { what: "group", .. }),
                "{name:?}: {error:?}"
            );
        }
    }

    #[test]
    fn a_topic_is_a_stream_and_one_subject_in_the_namespace() {
        assert_eq!(stream("cairn", "orders"), "cairn-orders");
        assert_eq!(subject("cairn", "orders"), "cairn.orders");
    }
}
