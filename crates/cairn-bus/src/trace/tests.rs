use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tower::{Layer, Service, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span;

use super::{SpanId, TraceContext, TraceId, TraceLayer, TraceParentError, current, inject};
use crate::handler::{HandlerError, Incoming};
use crate::message::{Headers, Message, headers};

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn parse_err(header: &str) -> TraceParentError {
    TraceContext::parse(header).expect_err(header)
}

#[test]
fn a_valid_traceparent_parses_into_its_ids_and_flags() {
    let context = TraceContext::parse(VALID).unwrap();
    assert_eq!(
        context.trace_id().get(),
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736
    );
    assert_eq!(context.span_id().get(), 0x00f0_67aa_0ba9_02b7);
    assert_eq!(context.parent_id(), None);
    assert_eq!(context.flags(), 1);
    assert!(context.is_sampled());
    assert_eq!(context.to_header(), VALID);

    let unsampled =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
    assert!(!unsampled.is_sampled());
}

#[test]
fn surrounding_whitespace_is_ignored() {
    let context = TraceContext::parse(&format!(" \t{VALID}\t ")).unwrap();
    assert_eq!(context.to_header(), VALID);
}

#[test]
fn a_later_version_may_carry_more_fields() {
    let context =
        TraceContext::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next")
            .unwrap();
    assert_eq!(context.to_header(), VALID);
}

#[test]
fn a_missing_field_is_rejected() {
    assert_eq!(
        parse_err(""),
        TraceParentError::Length {
            field: "version",
            found: 0,
            expected: 2
        }
    );
    assert_eq!(
        parse_err("00"),
        TraceParentError::Missing { field: "trace-id" }
    );
    assert_eq!(
        parse_err("00-4bf92f3577b34da6a3ce929d0e0e4736"),
        TraceParentError::Missing { field: "parent-id" }
    );
    assert_eq!(
        parse_err("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
        TraceParentError::Missing {
            field: "trace-flags"
        }
    );
}

#[test]
fn a_field_of_the_wrong_length_is_rejected() {
    let cases = [
        (
            "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "version",
            3,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "trace-id",
            31,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e47360-00f067aa0ba902b7-01",
            "trace-id",
            33,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "parent-id",
            15,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b70-01",
            "parent-id",
            17,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "trace-flags",
            1,
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "trace-flags",
            3,
        ),
        // A multi-byte character counts in bytes and never splits a character.
        (
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
            "trace-id",
            33,
        ),
    ];
    for (header, field, found) in cases {
        assert!(
            matches!(parse_err(header), TraceParentError::Length { field: f, found: n, .. } if f == field && n == found),
            "{header}: {:?}",
            parse_err(header)
        );
    }
}

#[test]
fn anything_but_lower_case_hex_is_rejected() {
    let cases = [
        (
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "version",
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "trace-id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "trace-id",
        ),
        (
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "trace-id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba9 2b7-01",
            "parent-id",
        ),
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "trace-flags",
        ),
    ];
    for (header, field) in cases {
        assert_eq!(
            parse_err(header),
            TraceParentError::NotHex { field },
            "{header}"
        );
    }
}

#[test]
fn version_ff_is_rejected() {
    assert_eq!(
        parse_err("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        TraceParentError::ForbiddenVersion
    );
}

#[test]
fn version_00_with_trailing_data_is_rejected() {
    assert_eq!(
        parse_err("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
        TraceParentError::TrailingData
    );
}

#[test]
fn all_zero_ids_are_rejected() {
    assert_eq!(
        parse_err("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        TraceParentError::ZeroTraceId
    );
    assert_eq!(
        parse_err("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        TraceParentError::ZeroParentId
    );
}

#[test]
fn any_single_byte_change_parses_or_fails_cleanly() {
    // Every position, every interesting byte: never a panic, and whatever parses writes
    // back the header it came from (as version 00).
    let replacements = ['0', 'f', 'F', 'z', '-', ' ', '\0', 'é', '\u{1F600}'];
    for position in 0..VALID.len() {
        for replacement in replacements {
            let mut header = VALID.to_owned();
            header.replace_range(position..=position, replacement.encode_utf8(&mut [0; 4]));
            if let Ok(context) = TraceContext::parse(&header) {
                assert_eq!(context.to_header()[2..], header.trim()[2..], "{header}");
            }
        }
    }
}

#[test]
fn error_codes_are_distinct() {
    let errors = [
        parse_err("00"),
        parse_err("0"),
        parse_err("0g"),
        parse_err("ff"),
        parse_err(&format!("{VALID}-x")),
        parse_err("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        parse_err("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
    ];
    let codes: std::collections::BTreeSet<&str> = errors.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), errors.len(), "{codes:?}");
}

#[test]
fn a_root_has_fresh_non_zero_ids_and_no_parent() {
    let (a, b) = (TraceContext::new_root(), TraceContext::new_root());
    assert_ne!(a.trace_id(), b.trace_id());
    assert_ne!(a.span_id(), b.span_id());
    assert_eq!(a.parent_id(), None);
    assert!(a.is_sampled());
    assert_eq!(TraceContext::parse(&a.to_header()).unwrap(), a);
    assert_eq!(TraceId::new(0), None);
    assert_eq!(SpanId::new(0), None);
}

#[test]
fn a_child_keeps_the_trace_and_takes_its_parent_as_parent() {
    let parent = TraceContext::parse(VALID)
        .unwrap()
        .with_trace_state(Some("vendor=abc"));
    let child = parent.child();
    assert_eq!(child.trace_id(), parent.trace_id());
    assert_ne!(child.span_id(), parent.span_id());
    assert_eq!(child.parent_id(), Some(parent.span_id()));
    assert_eq!(child.flags(), parent.flags());
    assert_eq!(child.trace_state(), Some("vendor=abc"));
}

#[test]
fn extract_reads_traceparent_and_tracestate() {
    let mut carried = Headers::new();
    assert_eq!(TraceContext::extract(&carried), Ok(None));
    carried.insert(headers::TRACEPARENT.to_owned(), VALID.to_owned());
    carried.insert(headers::TRACESTATE.to_owned(), "a=1,b=2".to_owned());
    let context = TraceContext::extract(&carried).unwrap().unwrap();
    assert_eq!(context.to_header(), VALID);
    assert_eq!(context.trace_state(), Some("a=1,b=2"));

    carried.insert(headers::TRACEPARENT.to_owned(), "garbage".to_owned());
    assert!(TraceContext::extract(&carried).is_err());
}

/// What a handler saw: its trace context, and the headers `inject` wrote.
type Seen = Arc<Mutex<Vec<(Option<TraceContext>, Headers)>>>;

/// A handler that reports the trace context it runs in, and what `inject` writes there.
fn observing_handler(
    seen: Seen,
) -> impl Service<Incoming, Response = (), Error = HandlerError, Future: Send> + Clone {
    tower::service_fn(move |_request: Incoming| {
        let seen = Arc::clone(&seen);
        async move {
            tokio::task::yield_now().await;
            let mut published = Headers::new();
            inject(&mut published);
            seen.lock().unwrap().push((current(), published));
            Ok(())
        }
    })
}

async fn handle(message: Message) -> (TraceContext, Headers) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    TraceLayer::new()
        .layer(observing_handler(Arc::clone(&seen)))
        .oneshot(Incoming::new("orders", message))
        .await
        .unwrap();
    let (context, published) = seen.lock().unwrap().pop().unwrap();
    (context.expect("a context inside the handler"), published)
}

#[tokio::test]
async fn a_message_with_traceparent_continues_its_trace_with_a_fresh_span() {
    let message = Message::new("order.placed", &b"{}"[..])
        .with_header(headers::TRACEPARENT, VALID)
        .with_header(headers::TRACESTATE, "vendor=abc");
    let sender = TraceContext::parse(VALID).unwrap();
    let (first, _) = handle(message.clone()).await;
    let (second, _) = handle(message).await;
    for handling in [&first, &second] {
        assert_eq!(handling.trace_id(), sender.trace_id());
        assert_ne!(handling.span_id(), sender.span_id());
        assert_eq!(handling.parent_id(), Some(sender.span_id()));
        assert_eq!(handling.trace_state(), Some("vendor=abc"));
    }
    assert_ne!(first.span_id(), second.span_id());
}

#[tokio::test]
async fn a_message_without_traceparent_starts_a_new_trace() {
    let (first, _) = handle(Message::new("order.placed", &b"{}"[..])).await;
    let (second, _) = handle(Message::new("order.placed", &b"{}"[..])).await;
    assert_ne!(first.trace_id(), second.trace_id());
    assert_eq!(first.parent_id(), None);
}

#[tokio::test]
async fn a_malformed_traceparent_starts_a_new_trace() {
    let malformed = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let message = Message::new("order.placed", &b"{}"[..])
        .with_header(headers::TRACEPARENT, malformed)
        .with_header(headers::TRACESTATE, "vendor=abc");
    let (handling, _) = handle(message).await;
    assert_ne!(handling.trace_id().get(), 0);
    assert_eq!(handling.parent_id(), None);
    // The trace state belonged to the broken trace.
    assert_eq!(handling.trace_state(), None);
}

#[tokio::test]
async fn inject_writes_a_header_that_parses_back_as_the_handling() {
    let message = Message::new("order.placed", &b"{}"[..])
        .with_header(headers::TRACEPARENT, VALID)
        .with_header(headers::TRACESTATE, "vendor=abc");
    let (handling, published) = handle(message).await;
    let sent = TraceContext::extract(&published).unwrap().unwrap();
    assert_eq!(sent.trace_id(), handling.trace_id());
    assert_eq!(sent.span_id(), handling.span_id());
    assert_eq!(sent.trace_state(), Some("vendor=abc"));

    // The next service continues the same trace from there.
    let downstream = Message {
        headers: published,
        ..Message::new("invoice.requested", &b"{}"[..])
    };
    let (next, _) = handle(downstream).await;
    assert_eq!(next.trace_id(), handling.trace_id());
    assert_eq!(next.parent_id(), Some(handling.span_id()));
}

#[test]
fn outside_a_handler_there_is_no_context_and_inject_writes_nothing() {
    assert_eq!(current(), None);
    let mut published = Headers::new();
    assert!(!inject(&mut published));
    assert!(published.is_empty());
}

#[tokio::test]
async fn the_context_is_set_while_the_inner_service_is_called() {
    #[derive(Clone, Default)]
    struct SeesOnCall(Arc<Mutex<Option<TraceContext>>>);
    impl Service<Incoming> for SeesOnCall {
        type Response = ();
        type Error = HandlerError;
        type Future = std::future::Ready<Result<(), HandlerError>>;
        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), HandlerError>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _request: Incoming) -> Self::Future {
            *self.0.lock().unwrap() = current();
            std::future::ready(Ok(()))
        }
    }
    let inner = SeesOnCall::default();
    let seen = Arc::clone(&inner.0);
    let message = Message::new("t", &b""[..]).with_header(headers::TRACEPARENT, VALID);
    TraceLayer::new()
        .layer(inner)
        .oneshot(Incoming::new("orders", message))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone().expect("a context in call");
    assert_eq!(
        seen.trace_id(),
        TraceContext::parse(VALID).unwrap().trace_id()
    );
}

/// Records the fields of every span opened while it is the default subscriber.
#[derive(Default)]
struct SpanRecorder {
    spans: Mutex<Vec<(&'static str, BTreeMap<&'static str, String>)>>,
    next: std::sync::atomic::AtomicU64,
}

struct FieldsOf<'a>(&'a mut BTreeMap<&'static str, String>);

impl Visit for FieldsOf<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

impl tracing::Subscriber for SpanRecorder {
    fn enabled(&self, _metadata: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        let mut fields = BTreeMap::new();
        span.record(&mut FieldsOf(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .push((span.metadata().name(), fields));
        span::Id::from_u64(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
    }
    fn record(&self, _span: &span::Id, _values: &span::Record<'_>) {}
    fn record_follows_from(&self, _span: &span::Id, _follows: &span::Id) {}
    fn event(&self, _event: &tracing::Event<'_>) {}
    fn enter(&self, _span: &span::Id) {}
    fn exit(&self, _span: &span::Id) {}
}

#[tokio::test]
async fn each_message_gets_a_span_with_its_fields() {
    let recorder = Arc::new(SpanRecorder::default());
    let _default = tracing::subscriber::set_default(Arc::clone(&recorder));
    let message = Message::new("order.placed", &b"{}"[..])
        .with_key("order-7")
        .with_header(headers::TRACEPARENT, VALID);
    let id = message.id;
    let (handling, _) = handle(message).await;

    let spans = recorder.spans.lock().unwrap();
    let (name, fields) = spans
        .iter()
        .find(|(name, _)| *name == "handle_message")
        .expect("a handle_message span");
    assert_eq!(*name, "handle_message");
    assert_eq!(fields["message.id"], id.to_string());
    assert_eq!(fields["message.type"], "order.placed");
    assert_eq!(fields["topic"], "orders");
    assert_eq!(fields["key"], "order-7");
    assert_eq!(fields["attempt"], "1");
    assert_eq!(fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(fields["span_id"], handling.span_id().to_string());
    assert_eq!(fields["parent_id"], "00f067aa0ba902b7");
}
