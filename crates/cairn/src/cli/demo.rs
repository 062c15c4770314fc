//! `cairn demo`: a first run. Writes one order's lifecycle to the store in `--data-dir`
//! (an order, its payment and its shipment, as three streams tied together by one
//! correlation id, with a multi-stream append and optimistic expectations), reads it back
//! from the global log, and shows where the data lives and what to try next.

use std::path::Path;

use anyhow::Context as _;
use cairn::log::LogStore;
use cairn::{
    EventData, EventStore, ExpectedRevision, Metadata, Position, ReadAll, RecordedEvent,
    StreamAppend, StreamName, Uuid,
};
use serde_json::json;

use super::output::Printer;
use super::{Global, close_store, open_store};

/// The streams of one demo order.
struct Order {
    number: String,
    order: StreamName,
    payment: StreamName,
    shipment: StreamName,
    correlation: String,
}

impl Order {
    fn new() -> anyhow::Result<Self> {
        // The random tail of a fresh UUID v7 makes each run's order its own.
        let number = Uuid::now_v7().simple().to_string();
        let number = number.get(number.len() - 6..).unwrap_or(&number).to_owned();
        Ok(Self {
            order: StreamName::new(format!("order-{number}"))?,
            payment: StreamName::new(format!("payment-{number}"))?,
            shipment: StreamName::new(format!("shipment-{number}"))?,
            correlation: format!("checkout-{number}"),
            number,
        })
    }

    /// An event of this order's flow, caused by `cause` (the previous step).
    fn event(
        &self,
        event_type: &str,
        data: &serde_json::Value,
        cause: Option<Uuid>,
    ) -> anyhow::Result<EventData> {
        let mut event = EventData::json(event_type, data)?.with_correlation_id(&self.correlation);
        if let Some(cause) = cause {
            event = event.with_causation_id(cause.to_string());
        }
        Ok(event)
    }
}

/// Runs `cairn demo`.
pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let store = open_store(global, true).await?;
    let outcome = write_and_read(&store).await;
    close_store(store).await?;
    let (order, events) = outcome?;
    let mut out = Printer::new(global.json);
    if out.json() {
        for event in &events {
            out.event(event)?;
        }
        out.flush()?;
        return Ok(());
    }
    out.line(format_args!(
        "Cairn demo: order {} went through checkout; {} events were appended to 3 streams,",
        order.number,
        events.len()
    ))?;
    out.line(format_args!(
        "each acknowledged only once on disk, all tied by correlation id {}.\n",
        order.correlation
    ))?;
    out.line("Read back from the global log ($all):\n")?;
    for event in &events {
        out.event(event)?;
    }
    let dir = std::path::absolute(&global.data_dir).unwrap_or_else(|_| global.data_dir.clone());
    out.line(format_args!(
        "\nThe data lives in {} ({}; durability {}).",
        dir.display(),
        describe_usage(&dir),
        global.durability
    ))?;
    let data_dir = if global.data_dir == Path::new("./cairn-data") {
        String::new()
    } else {
        format!(" --data-dir {}", global.data_dir.display())
    };
    out.line(format_args!(
        "\nTry next:\n  \
         cairn{data_dir} read {order}\n  \
         cairn{data_dir} read --all --category order --json\n  \
         cairn{data_dir} append {order} --type OrderDelivered --data '{{\"by\":\"courier\"}}' --expected 2\n  \
         cairn{data_dir} streams\n  \
         cairn{data_dir} tail        (then run `cairn{data_dir} demo` again in another terminal)\n  \
         cairn bench",
        order = order.order
    ))?;
    out.flush()?;
    Ok(())
}

/// Appends the order's lifecycle and reads it back.
async fn write_and_read(store: &LogStore) -> anyhow::Result<(Order, Vec<RecordedEvent>)> {
    let order = Order::new()?;
    let total_cents = 2 * 1250 + 2400;

    let placed = order.event(
        "OrderPlaced",
        &json!({
            "order": order.number,
            "customer": "ada@example.com",
            "lines": [
                { "sku": "MUG-CAIRN", "quantity": 2, "unit_cents": 1250 },
                { "sku": "TEE-CAIRN", "quantity": 1, "unit_cents": 2400 },
            ],
            "total_cents": total_cents,
        }),
        None,
    )?;
    let placed_id = placed.id;
    let first = store
        .append(&order.order, ExpectedRevision::NoStream, vec![placed])
        .await
        .context("placing the order")?;

    // The payment and the order's change of state commit together, or not at all.
    let captured = order.event(
        "PaymentCaptured",
        &json!({ "order": order.number, "amount_cents": total_cents, "method": "card" }),
        Some(placed_id),
    )?;
    let paid = order.event(
        "OrderPaid",
        &json!({ "order": order.number, "payment": order.payment.as_str() }),
        Some(captured.id),
    )?;
    let paid_id = paid.id;
    store
        .append_multi(vec![
            StreamAppend::new(
                order.payment.clone(),
                ExpectedRevision::NoStream,
                vec![captured],
            ),
            StreamAppend::new(
                order.order.clone(),
                ExpectedRevision::Exact(first.revision.0),
                vec![paid],
            ),
        ])
        .await
        .context("recording the payment")?;

    let dispatched = order.event(
        "ShipmentDispatched",
        &json!({ "order": order.number, "carrier": "cairn-post", "parcels": 1 }),
        Some(paid_id),
    )?;
    let shipped = order.event(
        "OrderShipped",
        &json!({ "order": order.number, "shipment": order.shipment.as_str() }),
        Some(dispatched.id),
    )?;
    store
        .append_multi(vec![
            StreamAppend::new(
                order.shipment.clone(),
                ExpectedRevision::NoStream,
                vec![dispatched],
            ),
            StreamAppend::new(
                order.order.clone(),
                ExpectedRevision::Exact(first.revision.0 + 1),
                vec![shipped],
            ),
        ])
        .await
        .context("recording the shipment")?;

    let events = read_flow(store, first.position, &order.correlation).await?;
    Ok((order, events))
}

/// Reads `$all` from `from`, keeping the events of one correlation id.
async fn read_flow(
    store: &LogStore,
    from: Position,
    correlation: &str,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut events = Vec::new();
    let mut request = ReadAll::forwards().from_position(from);
    loop {
        let page = store.read_all(request.clone()).await?;
        events.extend(
            page.events
                .into_iter()
                .filter(|e| e.metadata.get(Metadata::CORRELATION_ID) == Some(correlation)),
        );
        match page.next {
            Some(next) if !page.end => request.from = Some(next),
            _ => return Ok(events),
        }
    }
}

/// How many files the data directory holds and how much disk they take.
fn describe_usage(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let mut files = 0u64;
    let mut blocks = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                files += 1;
                blocks += metadata.blocks();
            }
        }
    }
    let kib = blocks * 512 / 1024;
    format!("{files} files, {kib} KiB on disk")
}
