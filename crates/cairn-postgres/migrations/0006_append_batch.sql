-- Schema version 6: several appends, each to one stream, in one transaction.

-- Appends that arrived concurrently, applied in one round trip and one transaction (one
-- commit, one WAL flush), each judged on its own: a refusal refuses that append only, and
-- the others still commit. The client combines appends this way when more of them are in
-- flight than it lets run side by side (see combine.rs).
--
-- Appends are numbered from 1 in the order they are to apply. Streams are numbered from 1
-- too (stream_names holds each stream once; append_streams names each append's stream),
-- so that two appends to one stream apply in order: the second sees the first's revision
-- and is checked against it.
--
-- Locks: every stream's lock is tried before anything is read, in key order, without
-- waiting. A stream whose lock another transaction holds (a writer of that stream, or an
-- application's transaction that appended to it and has not ended) is left out: its
-- appends come back busy (outcome 4) and the client runs them on their own, where they
-- wait for the lock. So one held stream never holds up the batch's other appends, and a
-- batch never waits, which also keeps it out of any deadlock. The transaction id is taken
-- after the locks (positions follow revisions inside a stream, as in
-- cairn_append_stream).
--
-- Checks run under the locks, in plain statements (no exception block or savepoint per
-- append, which would cost a subtransaction each):
--   - an append with an event id that is already recorded is not applied (outcome 3): the
--     caller tells a retry from a reused id, as it does after a refusal. Two appends of
--     one batch never share an id (the caller splits batches there);
--   - a tombstoned stream refuses (outcome 2);
--   - an expectation that fails refuses (outcome 1, actual the revision the append found,
--     NULL for no stream).
-- A stream that does not exist is created by its first applied append only.
--
-- event_appends: each event's append, events grouped by append in append order;
-- event_ranks: each event's 0-based rank inside its append; counts: events per append.
--
-- Returns one row per append, in append order: outcome (0 applied, 1 expectation failed,
-- 2 tombstoned, 3 ids recorded, 4 busy), actual (outcome 1), and for an applied append its
-- last revision and last position.
CREATE FUNCTION cairn_append_batch(
    stream_names text[], stream_categories text[], append_streams integer[],
    expected_kinds smallint[], expected_revisions bigint[], counts integer[],
    event_appends integer[], event_ranks integer[], ids uuid[], event_types text[],
    content_types text[], metadata bytea[], payloads bytea[])
RETURNS TABLE (outcome smallint, actual bigint, last_revision bigint, last_position bigint)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    appends integer := cardinality(append_streams);
    -- Per stream: its id (NULL until it exists), lifecycle and last revision, kept up to
    -- date as the batch's appends apply.
    stream_ids bigint[];
    lifecycles smallint[];
    lasts bigint[];
    -- Per append.
    outcomes smallint[] := array_fill(0::smallint, ARRAY[appends]);
    actuals bigint[] := array_fill(NULL::bigint, ARRAY[appends]);
    targets bigint[] := array_fill(NULL::bigint, ARRAY[appends]);
    first_revisions bigint[] := array_fill(NULL::bigint, ARRAY[appends]);
    first_ranks bigint[] := array_fill(NULL::bigint, ARRAY[appends]);
    recorded integer[];
    -- The lock keys of streams whose lock another transaction holds.
    busy integer[];
    revived bigint[] := '{}';
    slot integer;
    seen bigint;
    created bigint;
    ok boolean;
    done bigint := 0;
    base bigint;
    now_us bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
BEGIN
    SELECT COALESCE(array_agg(l.h), '{}') INTO busy
    FROM (SELECT DISTINCT hashtext(n) AS h FROM unnest(stream_names) AS n ORDER BY 1) AS l
    WHERE NOT pg_try_advisory_xact_lock(1667328370, l.h);

    -- New snapshots from here on: they see what the locks' previous holders committed.
    SELECT array_agg(s.id ORDER BY u.n), array_agg(s.lifecycle ORDER BY u.n),
           array_agg(l.revision ORDER BY u.n)
    INTO stream_ids, lifecycles, lasts
    FROM unnest(stream_names) WITH ORDINALITY AS u(name, n)
    LEFT JOIN cairn_streams s ON s.name = u.name
    LEFT JOIN LATERAL (
        SELECT e.revision FROM cairn_events e
        WHERE e.stream_id = s.id ORDER BY e.revision DESC LIMIT 1
    ) l ON true;

    SELECT COALESCE(array_agg(DISTINCT t.a), '{}') INTO recorded
    FROM unnest(event_appends, ids) AS t(a, id)
    WHERE EXISTS (SELECT 1 FROM cairn_events e WHERE e.id = t.id);

    FOR i IN 1 .. appends LOOP
        slot := append_streams[i];
        IF hashtext(stream_names[slot]) = ANY (busy) THEN
            outcomes[i] := 4;
            CONTINUE;
        END IF;
        IF i = ANY (recorded) THEN
            outcomes[i] := 3;
            CONTINUE;
        END IF;
        IF lifecycles[slot] = 2 THEN
            outcomes[i] := 2;
            CONTINUE;
        END IF;
        seen := CASE WHEN lifecycles[slot] = 0 THEN lasts[slot] END;
        ok := CASE expected_kinds[i]
                  WHEN 0 THEN true
                  WHEN 1 THEN seen IS NULL
                  WHEN 2 THEN seen IS NOT NULL
                  ELSE seen IS NOT DISTINCT FROM expected_revisions[i]
              END;
        IF NOT ok THEN
            outcomes[i] := 1;
            actuals[i] := seen;
            CONTINUE;
        END IF;
        IF stream_ids[slot] IS NULL THEN
            INSERT INTO cairn_streams (name, category)
            VALUES (stream_names[slot], stream_categories[slot])
            RETURNING id INTO created;
            stream_ids[slot] := created;
            lifecycles[slot] := 0;
        ELSIF lifecycles[slot] = 1 THEN
            -- A soft-deleted stream written again is live again.
            revived := revived || stream_ids[slot];
            lifecycles[slot] := 0;
        END IF;
        targets[i] := stream_ids[slot];
        first_revisions[i] := COALESCE(lasts[slot], -1) + 1;
        first_ranks[i] := done;
        done := done + counts[i];
        lasts[slot] := first_revisions[i] + counts[i] - 1;
    END LOOP;

    IF done > 0 THEN
        base := pg_current_xact_id()::text::bigint << 20;
        IF (base + done - 1) >> 20 <> base >> 20 THEN
            RAISE EXCEPTION USING ERRCODE = 'CA004', MESSAGE = '1';
        END IF;
        INSERT INTO cairn_events
            (position, stream_id, revision, id, event_type, content_type, metadata, payload,
             recorded_us)
        SELECT base + first_ranks[t.a] + t.k, targets[t.a], first_revisions[t.a] + t.k,
               t.id, t.event_type, t.content_type, t.metadata, t.payload, now_us
        FROM unnest(event_appends, event_ranks, ids, event_types, content_types, metadata,
                    payloads) AS t(a, k, id, event_type, content_type, metadata, payload)
        WHERE outcomes[t.a] = 0;
        IF cardinality(revived) > 0 THEN
            UPDATE cairn_streams s SET lifecycle = 0
            WHERE s.id = ANY (revived) AND s.lifecycle = 1;
        END IF;
    END IF;

    FOR i IN 1 .. appends LOOP
        outcome := outcomes[i];
        actual := actuals[i];
        IF outcomes[i] = 0 THEN
            last_revision := first_revisions[i] + counts[i] - 1;
            last_position := base + first_ranks[i] + counts[i] - 1;
        ELSE
            last_revision := NULL;
            last_position := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- A single-event append that does not wait for its stream: NULL when another transaction
-- holds the stream's lock, else what cairn_append_event returns (or raises). A combining
-- store writes a lone append with it (see combine.rs): that transaction holds the store's
-- turn, and must not wait for a lock while appends queue behind it; a NULL sends the
-- append to wait on its own. cairn_append_event takes the lock again, which a transaction
-- holding it gets at once.
CREATE FUNCTION cairn_try_append_event(
    stream_name text, stream_category text, expected_kind smallint, expected_revision bigint,
    event_id uuid, event_type text, content_type text, metadata bytea, payload bytea)
RETURNS bigint[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(1667328370, hashtext(stream_name)) THEN
        RETURN NULL;
    END IF;
    RETURN cairn_append_event(stream_name, stream_category, expected_kind, expected_revision,
                              event_id, event_type, content_type, metadata, payload, false);
END
$$;
