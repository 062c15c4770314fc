//! Invalid input: stream names the contract refuses, events over the size limit (the
//! limit itself is accepted), and malformed events; nothing refused is written.

use cairn_core::{
    DEFAULT_CONTENT_TYPE, EventData, EventStore, ExpectedRevision, InvalidStreamName,
    MAX_EVENT_TYPE_LEN, MAX_STREAM_NAME_LEN, StreamName, WriteError,
};

use crate::StoreFactory;
use crate::failure::{Context, Failure, ensure, fail};
use crate::settings::Settings;
use crate::support::{Snapshot, event, name, read_stream_fully, show_all};

/// Recognises the refusal a name should get.
type NameCheck = fn(&InvalidStreamName) -> bool;

/// Names the contract refuses are refused by `StreamName::new` with the right reason, and
/// the longest valid names work in the store.
pub(crate) async fn stream_names<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let too_long = "a".repeat(MAX_STREAM_NAME_LEN + 1);
    let too_long_wide = "é".repeat(MAX_STREAM_NAME_LEN / 2 + 1);
    let refused: Vec<(&str, NameCheck)> = vec![
        ("", |e| matches!(e, InvalidStreamName::Empty)),
        (
            &too_long,
            |e| matches!(e, InvalidStreamName::TooLong { len } if *len == MAX_STREAM_NAME_LEN + 1),
        ),
        (
            &too_long_wide,
            |e| matches!(e, InvalidStreamName::TooLong { len } if *len == MAX_STREAM_NAME_LEN + 2),
        ),
        ("a\nb", |e| {
            matches!(
                e,
                InvalidStreamName::ControlCharacter {
                    character: '\n',
                    index: 1
                }
            )
        }),
        ("tab\there", |e| {
            matches!(e, InvalidStreamName::ControlCharacter { .. })
        }),
        ("nul\0", |e| {
            matches!(e, InvalidStreamName::ControlCharacter { .. })
        }),
        ("del\u{7f}", |e| {
            matches!(e, InvalidStreamName::ControlCharacter { .. })
        }),
        ("$all", |e| matches!(e, InvalidStreamName::Reserved { .. })),
        ("$custom-1", |e| {
            matches!(e, InvalidStreamName::Reserved { .. })
        }),
    ];
    for (text, is_expected) in refused {
        match StreamName::new(text) {
            Err(error) if is_expected(&error) => {}
            other => fail!(
                "StreamName::new({text:?}) should be refused with the matching reason, got {other:?}"
            ),
        }
    }

    let store = factory.create().await;
    let longest = "a".repeat(MAX_STREAM_NAME_LEN);
    let longest_wide = "é".repeat(MAX_STREAM_NAME_LEN / 2);
    for text in [
        longest.as_str(),
        longest_wide.as_str(),
        "a$",
        "π-ü",
        "with space-1",
    ] {
        let stream = name(text)?;
        let batch = vec![event("Named", 0)];
        store
            .append(&stream, ExpectedRevision::NoStream, batch.clone())
            .await
            .context(format!("appending to the valid stream {text:?}"))?;
        let read = read_stream_fully(&store, &stream).await?;
        ensure!(
            read.len() == 1 && read[0].id == batch[0].id && read[0].stream == stream,
            "stream {text:?} should read back its one event; it reads {}",
            show_all(&read)
        );
    }
    Ok(())
}

/// An event exactly at the store's size limit is accepted; one byte more (in any part the
/// size counts) is refused with `EventTooLarge` naming the size and limit, and nothing of
/// its batch is written.
pub(crate) async fn size_limit<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    const EVENT_TYPE: &str = "Sized";
    let store = factory.create().await;
    let limit = store.limits().max_event_size;
    let overhead = EVENT_TYPE.len() + DEFAULT_CONTENT_TYPE.len() + "key".len() + "value".len();
    ensure!(
        limit > overhead,
        "the store's max_event_size {limit} is too small for any useful event"
    );
    let stream = name("sized-1")?;
    let exact =
        EventData::new(EVENT_TYPE, vec![b'x'; limit - overhead]).with_metadata("key", "value");
    ensure!(
        exact.size() == limit,
        "the case built an event of {} bytes for a limit of {limit}",
        exact.size()
    );
    let result = store
        .append(&stream, ExpectedRevision::NoStream, vec![exact.clone()])
        .await
        .context(format!(
            "appending an event of exactly the limit, {limit} bytes"
        ))?;
    let read = read_stream_fully(&store, &stream).await?;
    ensure!(
        read.len() == 1 && read[0].payload == exact.payload && read[0].position == result.position,
        "the event at the size limit should read back whole; the stream reads {}",
        show_all(&read)
    );

    let before = Snapshot::take(&store).await?;
    let over_payload =
        EventData::new(EVENT_TYPE, vec![b'x'; limit - overhead + 1]).with_metadata("key", "value");
    let over_metadata =
        EventData::new(EVENT_TYPE, vec![b'x'; limit - overhead]).with_metadata("key", "value!");
    let over_type =
        EventData::new("Sized!", vec![b'x'; limit - overhead]).with_metadata("key", "value");
    for (what, over) in [
        ("a payload one byte over", over_payload),
        ("metadata one byte over", over_metadata),
        ("a type one byte over", over_type),
    ] {
        for batch in [vec![over.clone()], vec![event("Fine", 0), over.clone()]] {
            let what = format!(
                "an append of {} events, one with {what} the limit",
                batch.len()
            );
            match store.append(&stream, ExpectedRevision::Any, batch).await {
                Err(WriteError::EventTooLarge { id, size, limit: l })
                    if id == over.id && size == limit + 1 && l == limit => {}
                other => fail!(
                    "{what}: expected EventTooLarge {{ id: {}, size: {}, limit: {limit} }}, got \
                     {other:?}",
                    over.id,
                    limit + 1
                ),
            }
            before.unchanged(&store, &what).await?;
        }
    }
    Ok(())
}

/// Events with an empty, over-long or control-character type, an empty content type or
/// an empty metadata key are refused with `InvalidEvent` naming them; nothing is written.
pub(crate) async fn malformed_events<F: StoreFactory>(
    factory: &F,
    _settings: Settings,
) -> Result<(), Failure> {
    let store = factory.create().await;
    let stream = name("malformed-events-1")?;
    store
        .append(&stream, ExpectedRevision::NoStream, vec![event("Fine", 0)])
        .await
        .context("a valid append")?;
    let longest_type = "T".repeat(MAX_EVENT_TYPE_LEN);
    store
        .append(
            &stream,
            ExpectedRevision::Any,
            vec![event(&longest_type, 1)],
        )
        .await
        .context(format!("an event type of {MAX_EVENT_TYPE_LEN} bytes"))?;
    let before = Snapshot::take(&store).await?;
    let invalid = vec![
        ("an empty type", event("", 0)),
        ("a type with a newline", event("Bad\nType", 0)),
        ("a type with a NUL", event("Bad\0", 0)),
        (
            "a type one byte too long",
            event(&"T".repeat(MAX_EVENT_TYPE_LEN + 1), 0),
        ),
        (
            "an empty content type",
            event("Fine", 0).with_content_type(""),
        ),
        (
            "an empty metadata key",
            event("Fine", 0).with_metadata("", "value"),
        ),
    ];
    for (what, bad) in invalid {
        for batch in [vec![bad.clone()], vec![event("Fine", 1), bad.clone()]] {
            let what = format!("an append of {} events, one with {what}", batch.len());
            match store.append(&stream, ExpectedRevision::Any, batch).await {
                Err(WriteError::InvalidEvent { id, .. }) if id == bad.id => {}
                other => fail!(
                    "{what}: expected InvalidEvent {{ id: {}, .. }}, got {other:?}",
                    bad.id
                ),
            }
            before.unchanged(&store, &what).await?;
        }
    }
    Ok(())
}
