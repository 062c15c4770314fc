//! What a command carries besides itself: its id and where it comes from, so that every
//! event it causes can say so (`correlationid`, `causationid`, `traceparent`, `tenant`).

use cairn_core::{Metadata, RecordedEvent, Uuid};

/// The id and origin of one command. Every event the command causes records:
///
/// - `correlationid`: the flow it belongs to, [`CommandContext::correlation_id`], or the
///   command's own id when it starts a flow;
/// - `causationid`: what caused it, [`CommandContext::causation_id`], or the command's id;
/// - `traceparent`: the W3C trace context of the command, [`CommandContext::traceparent`]
///   (from the caller's tracing, or from the message that caused it); when there is
///   none, the command starts a new trace, recorded on its `tracing` span;
/// - `tenant`, when set.
///
/// # Examples
///
/// ```
/// use cairn_es::CommandContext;
///
/// let context = CommandContext::new().correlated_with("order-flow-7");
/// assert_eq!(context.correlation_id.as_deref(), Some("order-flow-7"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// The command's id (a new UUID v7 by default).
    pub command_id: Uuid,
    /// The flow this command belongs to.
    pub correlation_id: Option<String>,
    /// The id of the message or event that caused this command.
    pub causation_id: Option<String>,
    /// The W3C `traceparent` of the span the command runs in.
    pub traceparent: Option<String>,
    /// The tenant the command acts for.
    pub tenant: Option<String>,
}

impl Default for CommandContext {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandContext {
    /// A new command with a fresh id and no origin.
    pub fn new() -> Self {
        Self {
            command_id: cairn_core::new_id(),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tenant: None,
        }
    }

    /// A command caused by `event`: same flow, same trace, same tenant, caused by the
    /// event's id.
    pub fn following(event: &RecordedEvent) -> Self {
        let metadata = &event.metadata;
        Self {
            correlation_id: Some(
                metadata
                    .get(Metadata::CORRELATION_ID)
                    .map_or_else(|| event.id.to_string(), str::to_owned),
            ),
            causation_id: Some(event.id.to_string()),
            traceparent: metadata.get(Metadata::TRACEPARENT).map(str::to_owned),
            tenant: metadata.get(Metadata::TENANT).map(str::to_owned),
            ..Self::new()
        }
    }

    /// Sets the command id (a stable id makes a resent command recognisable).
    #[must_use]
    pub fn with_command_id(mut self, id: Uuid) -> Self {
        self.command_id = id;
        self
    }

    /// Sets the flow this command belongs to.
    #[must_use]
    pub fn correlated_with(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets what caused this command.
    #[must_use]
    pub fn caused_by(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// Sets the W3C trace context the command runs in.
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The trace context events of this command record: the given one when it is a
    /// well-formed W3C `traceparent`, else a new trace.
    pub(crate) fn trace(&self) -> String {
        match &self.traceparent {
            Some(given) if is_traceparent(given) => given.clone(),
            _ => new_traceparent(),
        }
    }

    /// The metadata every event of this command records.
    pub(crate) fn metadata(&self, traceparent: &str) -> Metadata {
        let own_id = self.command_id.to_string();
        let mut metadata = Metadata::new();
        metadata.insert(
            Metadata::CORRELATION_ID,
            self.correlation_id
                .clone()
                .unwrap_or_else(|| own_id.clone()),
        );
        metadata.insert(
            Metadata::CAUSATION_ID,
            self.causation_id.clone().unwrap_or(own_id),
        );
        metadata.insert(Metadata::TRACEPARENT, traceparent);
        if let Some(tenant) = &self.tenant {
            metadata.insert(Metadata::TENANT, tenant.clone());
        }
        metadata
    }
}

/// Whether `text` is a version-00 W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`, with
/// ids not all zero.
pub(crate) fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == "00"
            && hex(trace, 32)
            && hex(span, 16)
            && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0')
            && span.bytes().any(|b| b != b'0'))
}

/// A new trace: random trace and span ids, sampled.
fn new_traceparent() -> String {
    // A version-4 UUID is 122 random bits; the trace id takes one whole, the span id the
    // random half of another (never zero: its low bit is set).
    let trace = Uuid::new_v4().as_u128();
    let span = Uuid::new_v4().as_u64_pair().1 | 1;
    let mut text = String::with_capacity(55);
    text.push_str("00-");
    push_hex(&mut text, trace, 32);
    text.push('-');
    push_hex(&mut text, u128::from(span), 16);
    text.push_str("-01");
    text
}

/// Appends the low `digits` hex digits of `value`, lowercase, most significant first.
fn push_hex(text: &mut String, value: u128, digits: u32) {
    for digit in (0..digits).rev() {
        let nibble = ((value >> (digit * 4)) & 0xf) as u32;
        text.push(char::from_digit(nibble, 16).unwrap_or('0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_traces_are_well_formed_and_given_ones_are_kept() {
        let context = CommandContext::new();
        let trace = context.trace();
        assert!(is_traceparent(&trace), "{trace}");
        assert_ne!(trace, CommandContext::new().trace());
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(CommandContext::new().with_traceparent(given).trace(), given);
        let garbage = CommandContext::new()
            .with_traceparent("00-zz-00-01")
            .trace();
        assert!(is_traceparent(&garbage) && garbage != "00-zz-00-01");
    }

    #[test]
    fn a_command_starting_a_flow_correlates_and_causes_by_its_own_id() {
        let context = CommandContext::new();
        let metadata = context.metadata("t");
        let id = context.command_id.to_string();
        assert_eq!(metadata.get(Metadata::CORRELATION_ID), Some(id.as_str()));
        assert_eq!(metadata.get(Metadata::CAUSATION_ID), Some(id.as_str()));
        let followed = CommandContext::new()
            .correlated_with("flow")
            .caused_by("message-1")
            .with_tenant("acme")
            .metadata("t");
        assert_eq!(followed.get(Metadata::CORRELATION_ID), Some("flow"));
        assert_eq!(followed.get(Metadata::CAUSATION_ID), Some("message-1"));
        assert_eq!(followed.get(Metadata::TENANT), Some("acme"));
    }
}
