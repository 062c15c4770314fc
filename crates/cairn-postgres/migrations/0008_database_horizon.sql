-- Schema version 8: a release horizon that other databases' transactions do not hold back.
--
-- The release horizon of a snapshot is its oldest transaction still in flight
-- (pg_snapshot_xmin): transaction ids belong to the whole cluster, so a long write
-- transaction in any database of it, or an autovacuum ANALYZE there, held back every
-- reader of $all here until it ended. But only a transaction connected to this database
-- can write this database's events. So a horizon may pass any transaction in flight that
-- is known to be of another database, and no other.
--
-- What is known: a transaction's own ExclusiveLock on its transaction id, and any lock it
-- holds that names a database, are held by one virtual transaction, in one read of
-- pg_locks. A transaction locks objects of its own database, or of none (0, for objects
-- the cluster shares), with one exception: CREATE DATABASE locks relations of the
-- template and of the new database. It cannot run inside a transaction block and writes
-- no events, so taking it for a transaction of another database loses nothing. While a
-- transaction's id is in the snapshot its backend keeps its virtual transaction id, so a
-- transaction holding a lock in another database, whenever pg_locks was read, is a
-- transaction of that database. Transactions that have locked nothing in their database
-- (and DROP DATABASE, whose locks name none) still hold the horizon back. pg_locks shows
-- 32-bit transaction ids; those in flight lie within 2^31 of each other, so their low 32
-- bits tell them apart.
--
-- Reading pg_locks takes every partition of the lock table (and reads every backend's
-- fast-path locks), so the store asks for this horizon only when the plain one has not
-- moved for a while, and not often.

-- The release horizon of snapshot snap, as a transaction id: its oldest transaction in
-- flight that is not known to be of another database, or its xmax when there is none;
-- never above the caller's own transaction (which the snapshot does not list as in
-- flight), and the plain horizon on a standby (whose snapshots list no transactions of
-- the primary as in flight).
CREATE FUNCTION cairn_release_horizon(snap pg_snapshot) RETURNS bigint
LANGUAGE sql STABLE AS $$
    -- pg_locks is read once per call (materialized), whatever the plan of the rest.
    WITH holders AS MATERIALIZED (
        SELECT bool_or(l.database IS NOT NULL AND l.database <> 0
                       AND l.database <> (SELECT d.oid FROM pg_database d
                                          WHERE d.datname = current_database()))
                   AS elsewhere,
               array_agg(l.transactionid::text::bigint)
                   FILTER (WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock')
                   AS xids
        FROM pg_locks l
        WHERE l.granted
        GROUP BY l.virtualtransaction
    ),
    elsewhere AS (
        SELECT unnest(h.xids) AS xid32 FROM holders h WHERE h.elsewhere
    )
    SELECT CASE WHEN pg_is_in_recovery() THEN pg_snapshot_xmin(snap)::text::bigint
                ELSE LEAST(
                    (SELECT COALESCE(min(x::text::bigint), pg_snapshot_xmax(snap)::text::bigint)
                     FROM pg_snapshot_xip(snap) AS x
                     WHERE NOT EXISTS (SELECT 1 FROM elsewhere e
                                       WHERE e.xid32 = (x::text::bigint & 4294967295))),
                    pg_current_xact_id_if_assigned()::text::bigint)
           END
$$;

-- cairn_read_all as in schema version 3, with one more argument: when database_horizon
-- is set, the page's horizon is cairn_release_horizon of its snapshot instead of the
-- snapshot's xmin.
CREATE FUNCTION cairn_read_all(
    from_position bigint, max_events bigint, backwards boolean, stream_prefix text,
    stream_category text, event_types text[], database_horizon boolean)
RETURNS TABLE (horizon bigint, top bigint, "position" bigint, stream text, revision bigint,
               id uuid, event_type text, content_type text, metadata bytea, payload bytea,
               recorded_us bigint)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
AS $$
DECLARE
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
BEGIN
    -- A stable function reads in its caller's snapshot: the page and the horizon come
    -- from the same one.
    SELECT CASE WHEN database_horizon THEN cairn_release_horizon(pg_current_snapshot())
                ELSE pg_snapshot_xmin(pg_current_snapshot())::text::bigint END << 20,
           (SELECT max(m.position) FROM cairn_events m)
    INTO horizon, top;
    IF backwards THEN
        RETURN QUERY
            SELECT cairn_read_all.horizon, cairn_read_all.top, e.position, s.name::text,
                   e.revision, e.id, e.event_type::text, e.content_type, e.metadata,
                   e.payload, e.recorded_us
            FROM cairn_events e JOIN cairn_streams s ON s.id = e.stream_id
            WHERE e.position <= from_position AND e.position < cairn_read_all.horizon
              AND s.lifecycle <> 2
              AND e.revision >= GREATEST(
                  COALESCE(s.truncate_before, 0),
                  COALESCE(s.deleted_before, 0),
                  CASE WHEN s.max_count IS NULL THEN 0
                       ELSE COALESCE((SELECT max(l.revision) FROM cairn_events l
                                      WHERE l.stream_id = s.id), 0) + 1 - s.max_count END)
              AND (s.max_age_us IS NULL OR e.recorded_us >= now_us - s.max_age_us)
              AND (stream_prefix IS NULL OR starts_with(s.name, stream_prefix))
              AND (stream_category IS NULL OR s.category = stream_category)
              AND (cardinality(event_types) = 0 OR e.event_type = ANY (event_types))
            ORDER BY e.position DESC
            LIMIT max_events;
    ELSE
        RETURN QUERY
            SELECT cairn_read_all.horizon, cairn_read_all.top, e.position, s.name::text,
                   e.revision, e.id, e.event_type::text, e.content_type, e.metadata,
                   e.payload, e.recorded_us
            FROM cairn_events e JOIN cairn_streams s ON s.id = e.stream_id
            WHERE e.position >= from_position AND e.position < cairn_read_all.horizon
              AND s.lifecycle <> 2
              AND e.revision >= GREATEST(
                  COALESCE(s.truncate_before, 0),
                  COALESCE(s.deleted_before, 0),
                  CASE WHEN s.max_count IS NULL THEN 0
                       ELSE COALESCE((SELECT max(l.revision) FROM cairn_events l
                                      WHERE l.stream_id = s.id), 0) + 1 - s.max_count END)
              AND (s.max_age_us IS NULL OR e.recorded_us >= now_us - s.max_age_us)
              AND (stream_prefix IS NULL OR starts_with(s.name, stream_prefix))
              AND (stream_category IS NULL OR s.category = stream_category)
              AND (cardinality(event_types) = 0 OR e.event_type = ANY (event_types))
            ORDER BY e.position ASC
            LIMIT max_events;
    END IF;
    IF NOT FOUND THEN
        RETURN QUERY SELECT cairn_read_all.horizon, cairn_read_all.top, NULL::bigint, NULL::text,
            NULL::bigint, NULL::uuid, NULL::text, NULL::text, NULL::bytea, NULL::bytea,
            NULL::bigint;
    END IF;
END
$$;

-- The six-argument form stays for a build of schema version 7 still running beside this
-- one during an upgrade; it reads as before.
CREATE OR REPLACE FUNCTION cairn_read_all(
    from_position bigint, max_events bigint, backwards boolean, stream_prefix text,
    stream_category text, event_types text[])
RETURNS TABLE (horizon bigint, top bigint, "position" bigint, stream text, revision bigint,
               id uuid, event_type text, content_type text, metadata bytea, payload bytea,
               recorded_us bigint)
LANGUAGE sql STABLE AS $$
    SELECT * FROM cairn_read_all(from_position, max_events, backwards, stream_prefix,
                                 stream_category, event_types, false)
$$;
