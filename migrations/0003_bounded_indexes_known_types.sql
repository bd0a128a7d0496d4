-- Bounded index keys, and one capture table per known HEP type (issue 8, items 1 and 3).
--
-- 1. No value a sender controls may make a row unstorable. A btree index entry holds at
--    most 2704 bytes (a third of a page); a Call-ID, user, User-Agent or correlation id
--    longer than that (one 3.3 KB UDP datagram) made PostgreSQL refuse the row with
--    SQLSTATE 54000 and stopped all ingestion. Indexed text is now bounded by
--    hep_index_key(): its first 256 characters (at most 1024 bytes in UTF-8, so the key
--    of a key is itself). Real values are far shorter than 256 characters: for them the
--    key is the value and nothing changes. Two values that share their first 256
--    characters share a key; a query that must tell them apart also compares the
--    full column.
--    * sid (HOMER's session id, the Call-ID) is stored as the key of the Call-ID (or
--      correlation id) by the consumer, so its plain (sid, create_date) index, every
--      `sid = ...` query and homer-app keep working; the call_id column (and raw) keep
--      the full value. Rows stored before this migration keep their sid as it was.
--    * correlation_id, from_user, to_user, ruri_user and user_agent keep their full
--      values and are indexed by hep_index_key(column). A query that wants the index
--      compares keys (then values, if a long value's key is not precise enough):
--          WHERE hep_index_key(from_user) = hep_index_key('alice')
--      sip_call_flow (redefined below) and the cookbook in docs/sql.md do.
--    hep_index_key must never change its definition: the indexes and sid hold its
--    results. pipeline.storage.rows.index_key is its twin in Python.
--
-- 2. A hostile sender must not make the database create objects. The consumer no
--    longer creates a table for a HEP type seen for the first time: the known types
--    (HEP3 REV 37 and what heplify-server routes: pipeline.hep.chunks.PROTO_TYPE_NAMES)
--    have their tables here, and every other type is stored in hep_proto_unknown_default
--    with its number in hep_type.

CREATE OR REPLACE FUNCTION hep_index_key(value text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    -- A prefix, not a hash: left() is strict (so `hep_index_key(col) = ...` proves
    -- `col IS NOT NULL` for the partial indexes below) and cheap. PostgreSQL inlines
    -- this body into queries and into the index expressions it evaluates for every row
    -- written; an md5 there cost ~2 us per indexed column per row.
    SELECT left(value, 256)
$$;

COMMENT ON FUNCTION hep_index_key(text) IS
    'The bounded form in which capture tables index text (see migrations/0003): its first 256 characters. sid holds it; filter other columns with hep_index_key(col) = hep_index_key(v) (and col = v for an exact match) to use their index.';

-- Replaces a capture table's indexes on full text values (0001) with bounded ones.
-- The new indexes are built before the old ones go, so lookups never lose an index.
CREATE OR REPLACE FUNCTION hep_ingest_bound_capture_indexes(table_name text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    -- Not partial (a NULL key costs little in a one-column index): the planner takes
    -- the statistics of an expression only from a non-partial index, and
    -- sip_call_flow needs a good estimate to look its legs up through the index.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (hep_index_key(correlation_id))',
                   table_name || '_correlation_id_key_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (hep_index_key(from_user), create_date) '
                   'WHERE from_user IS NOT NULL',
                   table_name || '_from_user_key_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (hep_index_key(to_user), create_date) '
                   'WHERE to_user IS NOT NULL',
                   table_name || '_to_user_key_idx', table_name);
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_correlation_id_idx');
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_from_user_idx');
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_to_user_idx');
END
$fn$;

-- 0001's creator stays as the table's definition; the creator under its name now also
-- bounds the new table's indexes.
ALTER FUNCTION hep_ingest_create_capture_table(text)
    RENAME TO hep_ingest_create_capture_table_0001;

CREATE OR REPLACE FUNCTION hep_ingest_create_capture_table(table_name text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    existed boolean := to_regclass(format('%I', table_name)) IS NOT NULL;
BEGIN
    PERFORM hep_ingest_create_capture_table_0001(table_name);
    IF NOT existed THEN
        PERFORM hep_ingest_bound_capture_indexes(table_name);
    END IF;
END
$fn$;

-- Every capture table there is, including those an older consumer created on demand.
SELECT hep_ingest_bound_capture_indexes(table_name) FROM hep_ingest_capture_tables
 WHERE to_regclass(format('%I', table_name)) IS NOT NULL;

-- 0002's indexes on full text values (its (create_date, sid) index holds keys already).
CREATE INDEX IF NOT EXISTS hep_proto_1_call_ruri_user_key_idx
    ON hep_proto_1_call (hep_index_key(ruri_user), create_date) WHERE ruri_user IS NOT NULL;
CREATE INDEX IF NOT EXISTS hep_proto_1_registration_user_agent_key_idx
    ON hep_proto_1_registration (hep_index_key(user_agent), create_date)
    WHERE user_agent IS NOT NULL;
DROP INDEX IF EXISTS hep_proto_1_call_ruri_user_idx;
DROP INDEX IF EXISTS hep_proto_1_registration_user_agent_idx;

-- The known HEP types (pipeline.hep.chunks.PROTO_TYPE_NAMES; 1, 5 and 100 exist since
-- 0001), and the one table for every other type.
SELECT hep_ingest_create_capture_table(format('hep_proto_%s_default', t))
  FROM unnest(ARRAY[2, 3, 4, 6, 7, 8, 9, 10, 13, 32, 34, 35, 38, 50, 53, 54, 55, 56, 57,
                    58, 60, 61, 99, 101]) AS t;
SELECT hep_ingest_create_capture_table('hep_proto_unknown_default');

COMMENT ON TABLE hep_proto_unknown_default IS
    'Records whose HEP protocol type (chunk 0x000b) has no table of its own; hep_type holds the type.';


-- 0002's sip_call_flow with keys: sid holds the key of a Call-ID, and correlation ids
-- are found through their key index. p_call_id may be a Call-ID or its key (what
-- sip_calls shows for a Call-ID longer than 256 characters).
CREATE OR REPLACE FUNCTION sip_call_flow(
    p_call_id text,
    p_from timestamptz DEFAULT '-infinity',
    p_to timestamptz DEFAULT 'infinity'
)
RETURNS TABLE (
    leg            text,
    capture_table  text,
    id             bigint,
    create_date    timestamptz,
    src_ip         inet,
    src_port       integer,
    dst_ip         inet,
    dst_port       integer,
    method         text,
    status         smallint,
    reason         text,
    cseq_num       bigint,
    cseq_method    text,
    from_user      text,
    to_user        text,
    from_tag       text,
    to_tag         text,
    via_branch     text,
    user_agent     text,
    correlation_id text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
SELECT m.sid, m.capture_table, m.id, m.create_date, m.src_ip, m.src_port, m.dst_ip,
       m.dst_port, m.method, m.status, m.reason, m.cseq_num, m.cseq_method, m.from_user,
       m.to_user, m.from_tag, m.to_tag, m.via_branch, m.user_agent, m.correlation_id
  FROM sip_messages m
 WHERE m.create_date >= p_from
   AND m.create_date < p_to
   AND m.sid IN (
       SELECT hep_index_key(p_call_id)
       UNION
       SELECT hep_index_key(r.correlation_id) FROM sip_messages r
        WHERE r.sid = hep_index_key(p_call_id) AND r.correlation_id IS NOT NULL
          AND r.create_date >= p_from AND r.create_date < p_to
       UNION
       SELECT r.sid FROM sip_messages r
        WHERE hep_index_key(r.correlation_id) = hep_index_key(p_call_id)
          AND r.create_date >= p_from AND r.create_date < p_to)
 ORDER BY m.create_date, m.id
$fn$;
