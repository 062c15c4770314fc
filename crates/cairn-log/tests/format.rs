//! The on-disk format is frozen: a data directory written by format version 1 (the fixture
//! under `tests/fixtures/v1`) must open and read back exactly what was written.
//!
//! Regenerate the fixture only for a new format version:
//! `CAIRN_WRITE_FIXTURE=1 cargo nextest run -p cairn-log --test format`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_core::{
    EventData, EventStore, ExpectedRevision, Position, ReadAll, ReadError, ReadStream,
    RecordedEvent, Revision, StreamAppend, StreamMetadata, StreamName, StreamState, Uuid,
};
use cairn_log::{LogOptions, LogStore};

const SEGMENT_SIZE: u64 = 64 << 10;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

fn name(text: &str) -> StreamName {
    StreamName::new(text).expect("valid name")
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n)
}

/// The history the fixture holds.
async fn write_history(store: &LogStore) {
    let order = name("order-1");
    store
        .append(
            &order,
            ExpectedRevision::NoStream,
            vec![
                EventData::new("OrderPlaced", &br#"{"total":42}"#[..])
                    .with_id(id(1))
                    .with_correlation_id("checkout-7")
                    .with_metadata("tenant", "acme"),
                EventData::new("OrderPaid", &br#"{"amount":42}"#[..])
                    .with_id(id(2))
                    .with_causation_id("payment-9"),
            ],
        )
        .await
        .expect("append");
    store
        .append_multi(vec![
            StreamAppend::new(
                order.clone(),
                ExpectedRevision::Exact(1),
                vec![EventData::new("OrderShipped", &b"{}"[..]).with_id(id(3))],
            ),
            StreamAppend::new(
                name("invoice-1"),
                ExpectedRevision::NoStream,
                vec![
                    EventData::new("InvoiceIssued", &b"\x00\x01binary"[..])
                        .with_id(id(4))
                        .with_content_type("application/octet-stream"),
                ],
            ),
        ])
        .await
        .expect("multi-stream append");
    store
        .set_stream_metadata(
            &name("audit"),
            StreamMetadata::default()
                .with_max_count(2)
                .with_max_age(Duration::from_secs(1 << 40)),
        )
        .await
        .expect("metadata");
    for n in 0..3 {
        store
            .append(
                &name("audit"),
                ExpectedRevision::Any,
                vec![EventData::new("Audited", format!("{{\"n\":{n}}}")).with_id(id(10 + n))],
            )
            .await
            .expect("append");
    }
    store
        .append(
            &name("cart-1"),
            ExpectedRevision::NoStream,
            vec![EventData::new("ItemAdded", &b"{}"[..]).with_id(id(20))],
        )
        .await
        .expect("append");
    store
        .delete_stream(&name("cart-1"), ExpectedRevision::Exact(0))
        .await
        .expect("soft delete");
    store
        .append(
            &name("cart-1"),
            ExpectedRevision::NoStream,
            vec![EventData::new("ItemAdded", &b"{\"again\":true}"[..]).with_id(id(21))],
        )
        .await
        .expect("recreate");
    store
        .append(
            &name("session-1"),
            ExpectedRevision::NoStream,
            vec![EventData::new("Started", &b"{}"[..]).with_id(id(30))],
        )
        .await
        .expect("append");
    store
        .tombstone_stream(&name("session-1"), ExpectedRevision::Any)
        .await
        .expect("tombstone");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn options() -> LogOptions {
    LogOptions::default()
        .segment_size(SEGMENT_SIZE)
        .limits(cairn_core::StoreLimits {
            max_event_size: 16 << 10,
        })
}

/// One event as the fixture must hold it: (id, stream, revision, position, type, payload).
type Expected<'a> = (u128, &'a str, u64, u64, &'a str, &'a [u8]);

/// The visible events of the fixture in `$all` order. Positions are global byte offsets and
/// are part of the frozen format.
const EXPECTED_ALL: &[Expected<'static>] = &[
    (1, "order-1", 0, 96, "OrderPlaced", br#"{"total":42}"#),
    (2, "order-1", 1, 243, "OrderPaid", br#"{"amount":42}"#),
    (3, "order-1", 2, 402, "OrderShipped", b"{}"),
    (4, "invoice-1", 0, 495, "InvoiceIssued", b"\x00\x01binary"),
    (11, "audit", 1, 837, "Audited", br#"{"n":1}"#),
    (12, "audit", 2, 960, "Audited", br#"{"n":2}"#),
    (21, "cart-1", 1, 1266, "ItemAdded", br#"{"again":true}"#),
];

#[tokio::test]
async fn a_version_1_data_directory_reads_back_exactly() {
    let fixture = fixture_dir();
    if std::env::var_os("CAIRN_WRITE_FIXTURE").is_some() {
        let _ = std::fs::remove_dir_all(&fixture);
        let store = LogStore::open(&fixture, options()).expect("open fixture dir");
        write_history(&store).await;
        store.close().await.expect("close");
        drop(store);
        let _ = std::fs::remove_file(fixture.join("LOCK"));
    }
    let copy = std::env::temp_dir().join(format!("cairn-format-{}", Uuid::now_v7().simple()));
    copy_dir(&fixture, &copy);
    let store = LogStore::open(&copy, options()).expect("the fixture opens");

    let page = store
        .read_all(ReadAll::forwards().limit(100))
        .await
        .expect("reads $all");
    let found: Vec<Expected<'_>> = page
        .events
        .iter()
        .map(|e| {
            (
                e.id.as_u128() - id(0).as_u128(),
                e.stream.as_str(),
                e.revision.0,
                e.position.0,
                e.event_type.as_str(),
                &e.payload[..],
            )
        })
        .collect();
    assert_eq!(found, EXPECTED_ALL);

    let first: &RecordedEvent = &page.events[0];
    assert_eq!(first.content_type, "application/json");
    assert_eq!(first.metadata.correlation_id(), Some("checkout-7"));
    assert_eq!(first.metadata.tenant(), Some("acme"));
    assert_eq!(page.events[1].metadata.causation_id(), Some("payment-9"));
    assert_eq!(page.events[3].content_type, "application/octet-stream");
    assert!(
        page.events
            .windows(2)
            .all(|w| w[0].recorded <= w[1].recorded),
        "recorded times are in commit order"
    );

    let audit = store.stream_info(&name("audit")).await.expect("info");
    assert_eq!(audit.metadata.max_count, Some(2));
    assert_eq!(audit.metadata.max_age, Some(Duration::from_secs(1 << 40)));
    assert_eq!(
        audit.state,
        StreamState::Active {
            last_revision: Revision(2)
        }
    );
    let cart = store.stream_info(&name("cart-1")).await.expect("info");
    assert_eq!(
        cart.state,
        StreamState::Active {
            last_revision: Revision(1)
        }
    );
    assert!(matches!(
        store
            .read_stream(&name("session-1"), ReadStream::forwards())
            .await,
        Err(ReadError::StreamDeleted { .. })
    ));
    assert_eq!(
        store.head_position().await.expect("head"),
        Some(Position(1399)),
        "the tombstoned stream's event is the last one written"
    );

    // The frozen bytes of the segment header and the first batch header.
    let segment = std::fs::read(copy.join("log/00000000000000000000.seg")).expect("segment");
    assert_eq!(segment.len() as u64, SEGMENT_SIZE);
    assert_eq!(&segment[..8], b"CAIRNSEG");
    assert_eq!(&segment[8..12], &1u32.to_le_bytes());
    assert_eq!(&segment[24..32], &SEGMENT_SIZE.to_le_bytes());
    assert_eq!(&segment[68..72], &0xCA1B_BA7Cu32.to_le_bytes());
    assert_eq!(
        &segment[76..80],
        &2u32.to_le_bytes(),
        "two records in the first batch"
    );
    assert_eq!(
        &segment[80..88],
        &1u64.to_le_bytes(),
        "the first batch has sequence 1"
    );
    assert_eq!(segment[104], 1, "an event record");
    assert_eq!(
        std::fs::read_to_string(copy.join("FORMAT")).expect("FORMAT"),
        "cairn-log 1\n"
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&copy);
}
