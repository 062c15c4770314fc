-- Schema version 5: the single-event append, with scalar arguments.

-- One event appended to one stream, in one round trip: what cairn_append_stream does for
-- an append of one event, in fewer steps on the server:
--
-- - the event comes as scalar arguments, with no arrays to encode, receive and subscript;
-- - the lock is taken in a plain assignment (a PERFORM runs a query through the executor;
--   an assignment whose expression reads no table is evaluated directly);
-- - in the common case (a live stream, an expectation that holds), one statement reads the
--   stream and its last event, checks the expectation and inserts the event after it. When
--   it inserts nothing, cairn_append_stream takes over (it creates the stream, raises the
--   refusal, or revives a soft-deleted stream and inserts);
-- - the result is one value {last_revision, last_position}, so the caller selects the
--   function as a value rather than scanning it as a table.
--
-- The guarantees are those of cairn_append_stream: the stream's lock (the key of
-- cairn_append and cairn_lock_streams) is taken before the transaction id is, so positions
-- follow revisions inside the stream; the statements that read the stream start after the
-- lock is held, so they see what the lock's previous holder committed. Refusals are
-- cairn_append's, with MESSAGE '1'.

CREATE FUNCTION cairn_append_event(
    stream_name text, stream_category text, expected_kind smallint, expected_revision bigint,
    event_id uuid, event_type text, content_type text, metadata bytea, payload bytea,
    in_transaction boolean)
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked boolean;
    tx_id bigint;
    base bigint;
    inserted_revision bigint;
BEGIN
    locked := pg_advisory_xact_lock(1667328370, hashtext(stream_name)) IS NOT NULL;
    IF in_transaction THEN
        -- Ranks continue after the events this transaction already wrote.
        tx_id := pg_current_xact_id()::text::bigint;
        SELECT COALESCE(max(e.position) + 1, tx_id << 20) INTO base FROM cairn_events e
        WHERE e.position >= tx_id << 20 AND e.position < (tx_id + 1) << 20;
        IF base >> 20 <> tx_id THEN
            RAISE EXCEPTION USING ERRCODE = 'CA004', MESSAGE = '1';
        END IF;
    END IF;

    -- The common case. A new snapshot for this statement: it sees what the lock's previous
    -- holder committed. The transaction id is taken here, after the lock (unless the
    -- caller's transaction had one already: then base is set, and the stream's last event
    -- must be older than the transaction).
    INSERT INTO cairn_events AS n
        (position, stream_id, revision, id, event_type, content_type, metadata, payload,
         recorded_us)
    SELECT COALESCE(base, pg_current_xact_id()::text::bigint << 20), s.id,
           COALESCE(l.revision, -1) + 1, cairn_append_event.event_id,
           cairn_append_event.event_type, cairn_append_event.content_type,
           cairn_append_event.metadata, cairn_append_event.payload,
           (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
    FROM cairn_streams s
    LEFT JOIN LATERAL (
        SELECT e.revision, e.position FROM cairn_events e
        WHERE e.stream_id = s.id ORDER BY e.revision DESC LIMIT 1
    ) l ON true
    WHERE s.name = stream_name AND s.lifecycle = 0
      AND CASE expected_kind
              WHEN 0 THEN true
              WHEN 1 THEN l.revision IS NULL
              WHEN 2 THEN l.revision IS NOT NULL
              ELSE l.revision IS NOT DISTINCT FROM expected_revision
          END
      AND (base IS NULL OR l.position IS NULL OR l.position >> 20 <= base >> 20)
    RETURNING n.revision, n.position INTO inserted_revision, base;
    IF FOUND THEN
        RETURN ARRAY[inserted_revision, base];
    END IF;

    -- Otherwise (a new stream, a refusal, a soft-deleted stream): cairn_append_stream, whose
    -- lock this transaction already holds, and which raises the same refusals.
    SELECT r.last_revision, r.last_position INTO inserted_revision, base
    FROM cairn_append_stream(stream_name, stream_category, expected_kind, expected_revision,
                             ARRAY[event_id], ARRAY[event_type], ARRAY[content_type],
                             ARRAY[metadata], ARRAY[payload], in_transaction) AS r;
    RETURN ARRAY[inserted_revision, base];
END
$$;
