-- Schema version 3: a page of $all whose plan does not depend on the table's statistics.

-- One page of $all, forwards from from_position or backwards from it, with the release
-- horizon of the snapshot it was read in and the highest position committed then (top):
-- the caller knows from top >= horizon that committed events are held back.
--
-- Every row carries horizon and top; an empty page is one row whose event columns are
-- NULL. The filters: stream_prefix, stream_category (NULL for any) and event_types (empty
-- for any); visibility is the contract's Visibility rule, as in the crate's read path.
--
-- The planner settings make the one plan that reads a page in time proportional to the
-- page: the primary key in position order, each event's stream by its key, stopping at
-- the limit. Without them, a table whose statistics are missing or stale (a freshly
-- filled one) can get a plan that sorts every event from from_position on for each page,
-- so reading $all page by page takes time quadratic in its length.
CREATE FUNCTION cairn_read_all(
    from_position bigint, max_events bigint, backwards boolean, stream_prefix text,
    stream_category text, event_types text[])
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
    SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20,
           (SELECT max(m.position) FROM cairn_events m)
    INTO horizon, top;
    -- A stable function reads in its caller's snapshot: the page and the horizon come
    -- from the same one.
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
