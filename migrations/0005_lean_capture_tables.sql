-- Lean capture tables: HOMER headers as json, and only the indexes a query needs
-- (issue 10, item 3). Figures: docs/benchmarks.md ("PostgreSQL CPU per row"), measured
-- by bench/pg_rows_bench.py.
--
-- 1. protocol_header and data_header become json (were jsonb). PostgreSQL parses a
--    jsonb value into its binary form on every write, binary COPY included: HOMER's two
--    headers (~700 characters) cost ~6 us of CPU per row, 60 % of what the whole row
--    costs without indexes once they are json. json only checks the syntax and stores
--    the text. Every statement homer-app 1.5.20 sends still runs unchanged:
--    data/service/search.go builds its filters with `->>` only (`%s->>'%s' = ?`,
--    `LIKE`, `IN`, `(%s->>'%s')::int` in buildQuery and the smart input;
--    `protocol_header->>'srcIp' != ?` in GetTransactionData), looks rows up by
--    `sid = ANY(ARRAY[...])`, `sid in (?)` and `id = N` / `id IN (...)`, always within
--    `create_date between ? and ?`, and scans the headers into json.RawMessage; no
--    statement uses a jsonb-only operator or function (@>, ?, ?|, jsonb_*). Its
--    model/rawData.go names jsonb only in gorm tags, which matter to AutoMigrate, and
--    homer-app never creates the hep_proto_* tables. json's `->>` is immutable, so an
--    expression index on `data_header->>'callid'` (hep-ingest homer-indexes) works as
--    on jsonb. The documents stay as heplify-server writes them.
--    One difference matters: json stores an escaped \u0000 that jsonb refused, and
--    then every `->>` on that row fails. The row builder never writes one (NUL is
--    removed from every header value: tests/unit/test_rows.py, the property
--    test_build_row_never_raises; tests/integration/test_lean_schema.py reads such
--    rows back with `->>`).
--
-- 2. sid and correlation_id keep the database's collation, although they are compared
--    only for equality and "C" would let their btree indexes compare bytes instead of
--    calling strcoll. A function's result columns carry the default collation:
--    `SELECT * FROM sip_calls WHERE call_id = ...` pushes an equality of the default
--    collation down to sid, which a "C" index cannot serve, and the lookup became a
--    sequential scan. The saving is small beside that risk (docs/benchmarks.md), and
--    nothing on a database created with --locale=C (as `hep-ingest up` does).
--
-- 3. The index set, each justified by a query (see the comments on each index below
--    and in hep_ingest_lean_capture_table). Dropped, because no query of the CLI,
--    docs/sql.md or homer-app filters on them through an index:
--      (create_date) btree     replaced by a BRIN index: every query's time range is
--                              pruned to its day partitions first, and within a day
--                              rows arrive in capture order, which BRIN summarises
--                              for almost nothing per row
--      (src_ip, create_date), (dst_ip, create_date)
--                              homer-app filters protocol_header->>'srcIp', not the
--                              typed column; the cookbook groups by src_ip after
--                              aggregating calls
--      hep_index_key(from_user|to_user|ruri_user), create_date
--      hep_index_key(user_agent), create_date (registration)
--                              `hep-ingest calls --user`, the cookbook's "Calls by a
--                              user" and "REGISTER failures by user agent" filter the
--                              aggregated sip_calls_between / sip_registrations_between
--                              rows, which no index serves; homer-app's user search
--                              reads data_header->>'from_user' (indexed on demand by
--                              hep-ingest homer-indexes). A user filter on a capture
--                              table reads the day partitions of its time range.
--      (status, create_date) on call and registration
--                              `calls --status` filters aggregated rows too
--      hep_index_key(correlation_id) on non-SIP tables
--                              there sid already is the key of the correlation id (the
--                              consumer stores it so): `sid = ...` uses the sid index
--    Kept: the primary key (record_id, create_date) (the sink's INSERT ... ON CONFLICT;
--    record ids grow per receiver, so its inserts are nearly sequential and cheap),
--    (sid, create_date), hep_index_key(correlation_id) on the SIP tables, and
--    hep_proto_1_call_initial_invite_idx.
--
-- Upgrading rewrites every capture table once (both headers in one ALTER TABLE per
-- table, under an ACCESS EXCLUSIVE lock), in time proportional to the stored data:
-- 381 MB of capture tables took 18 s on the 2-core development machine under load,
-- about a minute per GB. Meanwhile the consumers' writes wait and Kafka holds the
-- records, so nothing is lost if the topic's retention outlasts the upgrade; on a large
-- database, let retention shrink it first or run `hep-ingest migrate` at a quiet hour.

CREATE OR REPLACE FUNCTION hep_ingest_lean_capture_table(table_name text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    -- Dropped before the rewrite, so that it does not rebuild them.
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_create_date_idx');
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_src_ip_idx');
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_dst_ip_idx');
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_from_user_key_idx');
    EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_to_user_key_idx');
    IF table_name NOT IN ('hep_proto_1_call', 'hep_proto_1_registration',
                          'hep_proto_1_default') THEN
        EXECUTE format('DROP INDEX IF EXISTS %I', table_name || '_correlation_id_key_idx');
    END IF;
    EXECUTE format(
        'ALTER TABLE %I '
        'ALTER COLUMN protocol_header TYPE json USING protocol_header::json, '
        'ALTER COLUMN data_header TYPE json USING data_header::json', table_name);
    -- Time ranges: homer-app's searches (`create_date between ? and ?` with filters on
    -- header fields, `id = N` message lookups), sip_registrations_between, the
    -- cookbook's per-type counts. Rows arrive in capture order, so each block range
    -- covers a short time span; autosummarize summarises a range once it is full.
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I USING brin (create_date) '
                   'WITH (autosummarize = on)',
                   table_name || '_create_date_brin_idx', table_name);
    EXECUTE format('COMMENT ON INDEX %I IS %L', table_name || '_create_date_brin_idx',
                   'time ranges within a day: homer-app searches (create_date between, '
                   'id = N), sip_registrations_between, docs/sql.md');
    -- Kept from 0001: (sid, create_date), for homer-app's call flow and correlation
    -- (`sid = ANY(ARRAY[...])`, `sid in (?)` on hep_proto_1_*, 5, 35, 100), the
    -- join of sip_calls_between, sip_call_flow (`hep-ingest call`) and the cookbook's
    -- "One call's messages" and "RTCP and log records joined to their call".
    EXECUTE format('COMMENT ON INDEX %I IS %L', table_name || '_sid_idx',
                   'sid = ...: homer-app call flow (sid = ANY), sip_calls_between join, '
                   'sip_call_flow (hep-ingest call), docs/sql.md one call, RTCP and logs');
    -- Kept from 0001: the primary key, for the sink's INSERT ... ON CONFLICT
    -- (record_id, create_date); record ids grow per receiver, so it costs little.
    EXECUTE format('COMMENT ON INDEX %I IS %L', table_name || '_pkey',
                   'the sink''s replay check: INSERT ... ON CONFLICT (record_id, create_date)');
    -- Kept from 0003 on the SIP tables: hep_index_key(correlation_id), for the legs of
    -- sip_call_flow (`hep-ingest call`).
    IF to_regclass(format('%I', table_name || '_correlation_id_key_idx')) IS NOT NULL THEN
        EXECUTE format('COMMENT ON INDEX %I IS %L', table_name || '_correlation_id_key_idx',
                       'sip_call_flow legs: hep_index_key(correlation_id) = '
                       'hep_index_key(call id) (hep-ingest call)');
    END IF;
END
$fn$;

COMMENT ON FUNCTION hep_ingest_lean_capture_table(text) IS
    'Gives a capture table the shape and indexes of migrations/0005 (json headers, BRIN on create_date, no index without a query).';

-- Every capture table there is, including those an older consumer created on demand.
SELECT hep_ingest_lean_capture_table(table_name) FROM hep_ingest_capture_tables
 WHERE to_regclass(format('%I', table_name)) IS NOT NULL;

-- 0002's and 0003's per-table indexes that no query needs (see 3. above).
DROP INDEX IF EXISTS hep_proto_1_call_status_idx;
DROP INDEX IF EXISTS hep_proto_1_call_ruri_user_key_idx;
DROP INDEX IF EXISTS hep_proto_1_registration_status_idx;
DROP INDEX IF EXISTS hep_proto_1_registration_user_agent_key_idx;
-- Kept: hep_proto_1_call_initial_invite_idx, (create_date, sid) WHERE method = 'INVITE'
-- AND to_tag IS NULL: the driving set of sip_calls_between (`hep-ingest calls`,
-- `stats`, every call query of the cookbook) and its NOT EXISTS probe. It holds only
-- initial INVITEs, and its key grows with time: it costs little.
COMMENT ON INDEX hep_proto_1_call_initial_invite_idx IS
    'sip_calls_between: the initial INVITEs of a time range (hep-ingest calls, stats; docs/sql.md call queries)';

-- 0003's creator stays as the table's definition; the creator under its name now also
-- makes the new table lean.
ALTER FUNCTION hep_ingest_create_capture_table(text)
    RENAME TO hep_ingest_create_capture_table_0003;

CREATE OR REPLACE FUNCTION hep_ingest_create_capture_table(table_name text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    existed boolean := to_regclass(format('%I', table_name)) IS NOT NULL;
BEGIN
    PERFORM hep_ingest_create_capture_table_0003(table_name);
    IF NOT existed THEN
        PERFORM hep_ingest_lean_capture_table(table_name);
    END IF;
END
$fn$;
