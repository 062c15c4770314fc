-- Schema version 1: streams and their events.
--
-- An event's position packs the id of the transaction that wrote it (xid8) with its rank
-- inside that transaction: position = xid * 2^20 + rank. Readers only see positions below
-- (oldest in-flight xid) * 2^20, so a position is handed out only once nothing smaller can
-- still commit. See ARCHITECTURE.md, "Ordering and positions".

CREATE TABLE cairn_streams (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Byte order, as the contract lists streams.
    name            text COLLATE "C" NOT NULL UNIQUE,
    category        text COLLATE "C" NOT NULL,
    -- 0 live, 1 soft-deleted, 2 tombstoned.
    lifecycle       smallint NOT NULL DEFAULT 0 CHECK (lifecycle IN (0, 1, 2)),
    -- The first revision after the events of the latest soft delete.
    deleted_before  bigint,
    -- Retention, clamped to bigint for the queries that apply it ...
    max_count       bigint,
    max_age_us      bigint,
    truncate_before bigint,
    -- ... and exactly as set, as JSON; NULL for the default.
    metadata        text
);
-- A stream's last revision is not kept here but read from its last event (one probe of
-- cairn_events_revision_key): appends then never update this table, whose few pages all
-- concurrent writers would otherwise contend for.

CREATE INDEX cairn_streams_category ON cairn_streams (category);

CREATE TABLE cairn_events (
    position     bigint PRIMARY KEY,
    -- cairn_streams.id; no foreign key: the check would lock the stream's row for every
    -- insert, and stream rows are never deleted.
    stream_id    bigint NOT NULL,
    revision     bigint NOT NULL,
    id           uuid NOT NULL,
    event_type   text COLLATE "C" NOT NULL,
    content_type text NOT NULL,
    -- The writer's metadata as a JSON object of strings.
    metadata     bytea NOT NULL,
    payload      bytea NOT NULL,
    -- Commit time, microseconds since the Unix epoch, from the database's clock.
    recorded_us  bigint NOT NULL,
    CONSTRAINT cairn_events_id_key UNIQUE (id),
    CONSTRAINT cairn_events_revision_key UNIQUE (stream_id, revision)
);

-- Serializes the writers of the named streams and returns the streams' state as it is
-- once the caller holds them (stream lifecycle changes use it; appends take the same locks
-- in cairn_append).
--
-- The locks are transaction-level advisory locks keyed by (class 'cair', hash of the
-- name), taken in key order so that multi-stream writers cannot deadlock. Taking them
-- assigns no transaction id, so a writer that gets its id afterwards (at its first insert)
-- gets a larger one than every earlier writer of the same streams: positions follow
-- revisions inside a stream. Each statement of a volatile PL/pgSQL function takes a new
-- snapshot, so the SELECT sees what the previous holder committed.
CREATE FUNCTION cairn_lock_streams(names text[])
RETURNS TABLE (id bigint, name text, last_revision bigint, lifecycle smallint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1667328370, l.h)
    FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(names) AS n ORDER BY 1) AS l;
    RETURN QUERY
        SELECT s.id, s.name::text,
               (SELECT max(e.revision) FROM cairn_events e WHERE e.stream_id = s.id),
               s.lifecycle
        FROM cairn_streams s
        WHERE s.name = ANY (names);
END
$$;

-- One append, in one round trip: takes the streams' locks, checks each part's expectation
-- in request order, and inserts the events at xid * 2^20 + rank. Returns each part's last revision and position, in request order.
--
-- expected_kinds: 0 any, 1 no stream, 2 stream exists, 3 exact (expected_revisions).
-- event_parts: the 1-based part of each event, events grouped by part in request order;
-- event_ranks: each event's 0-based rank inside its part.
-- in_transaction: the caller's transaction may already hold events of this transaction
-- (their ranks continue); otherwise ranks start at 0 without looking.
--
-- Refusals are raised with these SQLSTATEs, MESSAGE being the 1-based part:
--   CA001 wrong expected revision (DETAIL: the actual revision, empty for no stream)
--   CA002 the stream is tombstoned
--   CA003 the transaction's id predates the stream's last append
--   CA004 more than 2^20 events in one transaction (MESSAGE is 1)
CREATE FUNCTION cairn_append(
    names text[], categories text[], expected_kinds smallint[], expected_revisions bigint[],
    counts integer[], event_parts integer[], event_ranks integer[], ids uuid[],
    event_types text[],
    content_types text[], metadata bytea[], payloads bytea[], in_transaction boolean)
RETURNS TABLE (last_revision bigint, last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    parts integer := cardinality(names);
    stream_ids bigint[] := array_fill(0::bigint, ARRAY[parts]);
    next_revisions bigint[] := array_fill(0::bigint, ARRAY[parts]);
    last_positions bigint[] := array_fill(NULL::bigint, ARRAY[parts]);
    found_id bigint;
    found_last bigint;
    found_lifecycle smallint;
    found_position bigint;
    actual bigint;
    ok boolean;
    tx_id bigint;
    base bigint;
    total bigint := cardinality(ids);
    done bigint := 0;
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    revived boolean := false;
BEGIN
    PERFORM pg_advisory_xact_lock(1667328370, l.h)
    FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(names) AS n ORDER BY 1) AS l;
    FOR i IN 1 .. parts LOOP
        SELECT s.id, s.lifecycle INTO found_id, found_lifecycle
        FROM cairn_streams s WHERE s.name = names[i];
        IF FOUND THEN
            SELECT e.revision, e.position INTO found_last, found_position
            FROM cairn_events e WHERE e.stream_id = found_id
            ORDER BY e.revision DESC LIMIT 1;
            IF NOT FOUND THEN
                found_last := NULL;
                found_position := NULL;
            END IF;
        ELSE
            INSERT INTO cairn_streams (name, category) VALUES (names[i], categories[i])
            RETURNING id INTO found_id;
            found_last := NULL;
            found_lifecycle := 0;
            found_position := NULL;
        END IF;
        IF found_lifecycle = 2 THEN
            RAISE EXCEPTION USING ERRCODE = 'CA002', MESSAGE = i::text;
        END IF;
        actual := CASE WHEN found_lifecycle = 0 THEN found_last END;
        ok := CASE expected_kinds[i]
                  WHEN 0 THEN true
                  WHEN 1 THEN actual IS NULL
                  WHEN 2 THEN actual IS NOT NULL
                  ELSE actual IS NOT DISTINCT FROM expected_revisions[i]
              END;
        IF NOT ok THEN
            RAISE EXCEPTION USING ERRCODE = 'CA001', MESSAGE = i::text,
                DETAIL = COALESCE(actual::text, '');
        END IF;
        revived := revived OR found_lifecycle = 1;
        stream_ids[i] := found_id;
        next_revisions[i] := COALESCE(found_last, -1) + 1;
        last_positions[i] := found_position;
    END LOOP;

    tx_id := pg_current_xact_id()::text::bigint;
    FOR i IN 1 .. parts LOOP
        IF last_positions[i] >> 20 > tx_id THEN
            RAISE EXCEPTION USING ERRCODE = 'CA003', MESSAGE = i::text;
        END IF;
    END LOOP;
    IF in_transaction THEN
        SELECT COALESCE(max(e.position) + 1, tx_id << 20) INTO base FROM cairn_events e
        WHERE e.position >= tx_id << 20 AND e.position < (tx_id + 1) << 20;
    ELSE
        base := tx_id << 20;
    END IF;
    IF (base + total - 1) >> 20 <> tx_id THEN
        RAISE EXCEPTION USING ERRCODE = 'CA004', MESSAGE = '1';
    END IF;

    INSERT INTO cairn_events
        (position, stream_id, revision, id, event_type, content_type, metadata, payload,
         recorded_us)
    SELECT base + t.n - 1, stream_ids[t.p], next_revisions[t.p] + t.k,
           t.id, t.event_type, t.content_type, t.metadata, t.payload, now_us
    FROM unnest(event_parts, event_ranks, ids, event_types, content_types, metadata, payloads)
         WITH ORDINALITY AS t(p, k, id, event_type, content_type, metadata, payload, n);

    -- A soft-deleted stream written again is live again; no other append touches the row.
    IF revived THEN
        UPDATE cairn_streams s SET lifecycle = 0
        WHERE s.id = ANY (stream_ids) AND s.lifecycle = 1;
    END IF;

    FOR i IN 1 .. parts LOOP
        done := done + counts[i];
        last_revision := next_revisions[i] + counts[i] - 1;
        last_position := base + done - 1;
        RETURN NEXT;
    END LOOP;
END
$$;
