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
    -- The revision of the last event written, hidden or not; NULL before the first.
    last_revision   bigint,
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
)
-- Every append updates its stream's row: room on the page keeps those updates HOT.
WITH (fillfactor = 70);

CREATE INDEX cairn_streams_category ON cairn_streams (category);

CREATE TABLE cairn_events (
    position     bigint PRIMARY KEY,
    stream_id    bigint NOT NULL REFERENCES cairn_streams (id),
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
-- once the caller holds them.
--
-- The locks are transaction-level advisory locks keyed by (class 'cair', hash of the
-- name), taken in key order so that multi-stream writers cannot deadlock. Taking them
-- assigns no transaction id, so a writer that gets its id afterwards (at its first insert)
-- gets a larger one than every earlier writer of the same streams: positions follow
-- revisions inside a stream. Each statement of a volatile PL/pgSQL function takes a new
-- snapshot, so the SELECT sees what the previous holder committed.
CREATE FUNCTION cairn_lock_streams(names text[])
RETURNS TABLE (id bigint, name text, last_revision bigint, lifecycle smallint,
               last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1667328370, l.h)
    FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(names) AS n ORDER BY 1) AS l;
    RETURN QUERY
        SELECT s.id, s.name::text, s.last_revision, s.lifecycle,
               (SELECT e.position FROM cairn_events e
                 WHERE e.stream_id = s.id ORDER BY e.revision DESC LIMIT 1)
        FROM cairn_streams s
        WHERE s.name = ANY (names);
END
$$;
