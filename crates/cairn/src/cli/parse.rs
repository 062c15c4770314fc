//! Parsers for argument values that clap does not know: durations, expected revisions,
//! `key=value` metadata and JSON payloads. Each error is one sentence, shown by clap as a
//! usage error (exit code 2).

use std::time::Duration;

use cairn::ExpectedRevision;

/// Parses a duration written as `<n>ms`, `<n>s` or `<n>m` (`<n>` may have a fraction;
/// `0` alone is zero).
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}: write it as 250ms, 2s or 1.5m");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, unit_secs) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        return Err(invalid());
    };
    let value: f64 = number.trim().parse().map_err(|_| invalid())?;
    if !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    Duration::try_from_secs_f64(value * unit_secs).map_err(|_| invalid())
}

/// Writes a duration back the way [`duration`] reads it.
pub(crate) fn show_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) && millis > 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// Parses an expected revision: a revision number, `any`, `no-stream` or `exists`.
pub(crate) fn expected_revision(text: &str) -> Result<ExpectedRevision, String> {
    match text {
        "any" => Ok(ExpectedRevision::Any),
        "no-stream" => Ok(ExpectedRevision::NoStream),
        "exists" => Ok(ExpectedRevision::StreamExists),
        _ => text.parse::<u64>().map(ExpectedRevision::Exact).map_err(|_| {
            format!("invalid expected revision {text:?}: use a revision number, any, no-stream or exists")
        }),
    }
}

/// Parses one metadata entry, `key=value` (the value may be empty and may contain `=`).
pub(crate) fn metadata_entry(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!(
            "invalid metadata {text:?}: write it as key=value, e.g. correlationid=checkout-7"
        )),
    }
}

/// A JSON document given on the command line, checked and kept as written.
#[derive(Debug, Clone)]
pub(crate) struct JsonText(pub(crate) String);

/// Checks that `text` is one JSON document.
pub(crate) fn json_text(text: &str) -> Result<JsonText, String> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map(|_| JsonText(text.to_owned()))
        .map_err(|error| format!("invalid JSON: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_milliseconds_seconds_and_minutes() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert!(duration("2").is_err());
        assert!(duration("-1s").is_err());
        assert!(duration("fast").is_err());
        assert_eq!(show_duration(Duration::from_secs(2)), "2s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn expected_revisions_read_numbers_and_names() {
        assert_eq!(expected_revision("7"), Ok(ExpectedRevision::Exact(7)));
        assert_eq!(expected_revision("any"), Ok(ExpectedRevision::Any));
        assert_eq!(
            expected_revision("no-stream"),
            Ok(ExpectedRevision::NoStream)
        );
        assert_eq!(
            expected_revision("exists"),
            Ok(ExpectedRevision::StreamExists)
        );
        assert!(expected_revision("-1").is_err());
        assert!(expected_revision("latest").is_err());
    }

    #[test]
    fn metadata_entries_split_at_the_first_equals_sign() {
        assert_eq!(
            metadata_entry("a=b=c"),
            Ok(("a".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(metadata_entry("a="), Ok(("a".to_owned(), String::new())));
        assert!(metadata_entry("=b").is_err());
        assert!(metadata_entry("ab").is_err());
    }

    #[test]
    fn json_text_is_checked_and_kept_as_written() {
        assert_eq!(json_text(r#"{ "a": 1 }"#).unwrap().0, r#"{ "a": 1 }"#);
        assert!(json_text("{a: 1}").is_err());
        assert!(json_text("1 2").is_err());
    }
}
