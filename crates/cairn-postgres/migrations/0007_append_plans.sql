-- Schema version 7: the write functions keep index plans as their tables grow.
--
-- PL/pgSQL caches each statement's plan for the session. A plan made while a table is
-- small (every new store starts empty) prefers a sequential scan and a hash join, which
-- is cheapest then, and the cached plan keeps scanning the whole table on every call as
-- it grows, until statistics change and the plan is made again. A busy new store read
-- its whole event table for every combined append (cairn_append_batch's event-id check
-- and stream lookup): hundreds of sequential scans a second, each longer than the last.
--
-- Every statement of these functions looks rows up by a key a unique index serves, for
-- a handful of keys at a time, so index lookups in nested loops are the right plan at
-- every size. As cairn_read_all does, the functions say so for their own duration.
ALTER FUNCTION cairn_append_batch
    SET enable_seqscan = off SET enable_bitmapscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION cairn_try_append_event
    SET enable_seqscan = off SET enable_bitmapscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION cairn_append_event
    SET enable_seqscan = off SET enable_bitmapscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION cairn_append_stream
    SET enable_seqscan = off SET enable_bitmapscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION cairn_append
    SET enable_seqscan = off SET enable_bitmapscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION cairn_lock_streams
    SET enable_seqscan = off SET enable_bitmapscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;
