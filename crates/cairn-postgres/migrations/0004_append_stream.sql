-- Schema version 4: a leaner write path for the common append, to one stream.

-- One append to one stream, in one round trip: what cairn_append does for a request of
-- one part, with scalar arguments and a single result row, and for a single event a
-- one-row INSERT. (cairn_append unnests its arrays through function scans, whose
-- per-call set-up costs about as much again as the rest of a one-event append.)
--
-- Takes the stream's lock (the same key as cairn_append and cairn_lock_streams), checks
-- the expectation, takes the transaction id, inserts the events at xid * 2^20 + rank and
-- returns the last revision and position. Refusals are those of cairn_append, with
-- MESSAGE '1' (the only part).
CREATE FUNCTION cairn_append_stream(
    stream_name text, stream_category text, expected_kind smallint, expected_revision bigint,
    ids uuid[], event_types text[], content_types text[], metadata bytea[], payloads bytea[],
    in_transaction boolean, OUT last_revision bigint, OUT last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    found_id bigint;
    found_lifecycle smallint;
    found_last bigint;
    found_position bigint;
    actual bigint;
    tx_id bigint;
    base bigint;
    total bigint := cardinality(ids);
BEGIN
    PERFORM pg_advisory_xact_lock(1667328370, hashtext(stream_name));
    -- A new snapshot for this statement: it sees what the lock's previous holder committed.
    SELECT s.id, s.lifecycle, l.revision, l.position
    INTO found_id, found_lifecycle, found_last, found_position
    FROM cairn_streams s
    LEFT JOIN LATERAL (
        SELECT e.revision, e.position FROM cairn_events e
        WHERE e.stream_id = s.id ORDER BY e.revision DESC LIMIT 1
    ) l ON true
    WHERE s.name = stream_name;
    IF NOT FOUND THEN
        INSERT INTO cairn_streams (name, category) VALUES (stream_name, stream_category)
        RETURNING id INTO found_id;
        found_lifecycle := 0;
    ELSIF found_lifecycle = 2 THEN
        RAISE EXCEPTION USING ERRCODE = 'CA002', MESSAGE = '1';
    END IF;
    actual := CASE WHEN found_lifecycle = 0 THEN found_last END;
    IF NOT (CASE expected_kind
                WHEN 0 THEN true
                WHEN 1 THEN actual IS NULL
                WHEN 2 THEN actual IS NOT NULL
                ELSE actual IS NOT DISTINCT FROM expected_revision
            END) THEN
        RAISE EXCEPTION USING ERRCODE = 'CA001', MESSAGE = '1',
            DETAIL = COALESCE(actual::text, '');
    END IF;

    tx_id := pg_current_xact_id()::text::bigint;
    IF found_position >> 20 > tx_id THEN
        RAISE EXCEPTION USING ERRCODE = 'CA003', MESSAGE = '1';
    END IF;
    IF in_transaction THEN
        SELECT COALESCE(max(e.position) + 1, tx_id << 20) INTO base FROM cairn_events e
        WHERE e.position >= tx_id << 20 AND e.position < (tx_id + 1) << 20;
    ELSE
        base := tx_id << 20;
    END IF;
    IF (base + total - 1) >> 20 <> tx_id THEN
        RAISE EXCEPTION USING ERRCODE = 'CA004', MESSAGE = '1';
    END IF;

    found_last := COALESCE(found_last, -1);
    IF total = 1 THEN
        INSERT INTO cairn_events
            (position, stream_id, revision, id, event_type, content_type, metadata, payload,
             recorded_us)
        VALUES (base, found_id, found_last + 1, ids[1], event_types[1], content_types[1],
                metadata[1], payloads[1],
                (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    ELSE
        INSERT INTO cairn_events
            (position, stream_id, revision, id, event_type, content_type, metadata, payload,
             recorded_us)
        SELECT base + t.n - 1, found_id, found_last + t.n, t.id, t.event_type,
               t.content_type, t.metadata, t.payload,
               (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
        FROM unnest(ids, event_types, content_types, metadata, payloads)
             WITH ORDINALITY AS t(id, event_type, content_type, metadata, payload, n);
    END IF;

    -- A soft-deleted stream written again is live again.
    IF found_lifecycle = 1 THEN
        UPDATE cairn_streams s SET lifecycle = 0 WHERE s.id = found_id;
    END IF;
    last_revision := found_last + total;
    last_position := base + total - 1;
END
$$;
