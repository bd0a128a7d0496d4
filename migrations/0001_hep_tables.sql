-- HOMER 7-compatible capture tables, plus typed columns for SQL analysis.
--
-- Every table has HOMER's columns (id, sid, create_date, protocol_header, data_header,
-- raw), so homer-app and existing HOMER queries keep working, and typed, indexed
-- columns so that operators filter with plain SQL instead of jsonb extraction.
-- Tables are range-partitioned on create_date (the capture time, UTC). Partitions are
-- created ahead and dropped by retention by `hep-ingest partitions` / the consumer;
-- each table also has a DEFAULT partition so a row with a skewed agent clock is
-- stored instead of failing its batch.

CREATE OR REPLACE FUNCTION hep_ingest_create_capture_table(table_name text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    -- Serialise creators: two sinks meeting a new HEP type at once would otherwise race
    -- in CREATE TABLE IF NOT EXISTS and one would fail with a unique violation on
    -- pg_type (SQLSTATE 23505, easily mistaken for a data error).
    PERFORM pg_advisory_xact_lock(7522525140629959013);
    -- An existing table is left alone: CREATE INDEX IF NOT EXISTS would still take a
    -- SHARE lock on the table and every partition, blocking writers.
    IF to_regclass(format('%I', table_name)) IS NOT NULL THEN
        INSERT INTO hep_ingest_capture_tables (table_name) VALUES (table_name)
        ON CONFLICT DO NOTHING;
        RETURN;
    END IF;
    EXECUTE format($ddl$
        CREATE TABLE IF NOT EXISTS %1$I (
            id              bigserial   NOT NULL,
            -- Call-ID for SIP, else the correlation id, else '' (HOMER's session id).
            sid             text        NOT NULL,
            create_date     timestamptz NOT NULL,
            protocol_header jsonb       NOT NULL,
            data_header     jsonb       NOT NULL,
            -- The payload as text. NUL bytes and invalid UTF-8 cannot live in text:
            -- such payloads are kept byte for byte in raw_bytes (see hep_payload()).
            raw             text        NOT NULL,
            raw_bytes       bytea,
            -- Unique per packet (assigned by the receiver): replays never duplicate rows.
            record_id       uuid        NOT NULL,
            hep_version     smallint    NOT NULL,
            hep_type        smallint,
            capture_id      bigint,
            node_name       text,
            correlation_id  text,
            ip_family       smallint,
            ip_proto        smallint,
            src_ip          inet,
            src_port        integer,
            dst_ip          inet,
            dst_port        integer,
            vlan            integer,
            receive_time    timestamptz NOT NULL,
            -- SIP fields (NULL for other payloads).
            call_id         text,
            method          text,
            status          smallint,
            reason          text,
            cseq_num        bigint,
            cseq_method     text,
            from_user       text,
            from_domain     text,
            from_tag        text,
            to_user         text,
            to_domain       text,
            to_tag          text,
            ruri_user       text,
            ruri_domain     text,
            user_agent      text,
            via_branch      text,
            contact_user    text,
            contact_host    text,
            expires         integer,
            -- Why a SIP payload could not be parsed; the row is stored all the same.
            parse_error     text,
            kafka_partition integer,
            kafka_offset    bigint,
            PRIMARY KEY (record_id, create_date)
        ) PARTITION BY RANGE (create_date)
    $ddl$, table_name);
    EXECUTE format($c$COMMENT ON COLUMN %I.method IS 'SIP request method; NULL for responses (see cseq_method, status)'$c$, table_name);
    EXECUTE format($c$COMMENT ON COLUMN %I.status IS 'SIP response status code; NULL for requests'$c$, table_name);
    EXECUTE format($c$COMMENT ON COLUMN %I.cseq_method IS 'Method named in CSeq, for requests and responses alike: what a response answers'$c$, table_name);
    EXECUTE format($c$COMMENT ON COLUMN %I.data_header IS 'HOMER data_header; for SIP responses its "method" key holds the status code, as heplify-server writes it'$c$, table_name);
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I DEFAULT',
                   table_name || '_default_part', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (create_date)',
                   table_name || '_create_date_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (sid, create_date)',
                   table_name || '_sid_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (correlation_id) WHERE correlation_id IS NOT NULL',
                   table_name || '_correlation_id_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (from_user, create_date) WHERE from_user IS NOT NULL',
                   table_name || '_from_user_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (to_user, create_date) WHERE to_user IS NOT NULL',
                   table_name || '_to_user_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (src_ip, create_date)',
                   table_name || '_src_ip_idx', table_name);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %I (dst_ip, create_date)',
                   table_name || '_dst_ip_idx', table_name);
    -- Registered so partition maintenance finds every capture table, including the
    -- ones created on demand for HEP types seen for the first time.
    INSERT INTO hep_ingest_capture_tables (table_name) VALUES (table_name)
    ON CONFLICT DO NOTHING;
END
$fn$;

CREATE TABLE IF NOT EXISTS hep_ingest_capture_tables (
    table_name     text PRIMARY KEY,
    -- NULL: use the consumer's --retention-days.
    retention_days integer,
    created_at     timestamptz NOT NULL DEFAULT now()
);

SELECT hep_ingest_create_capture_table('hep_proto_1_call');
SELECT hep_ingest_create_capture_table('hep_proto_1_registration');
SELECT hep_ingest_create_capture_table('hep_proto_1_default');
SELECT hep_ingest_create_capture_table('hep_proto_5_default');
SELECT hep_ingest_create_capture_table('hep_proto_100_default');

-- The captured payload byte for byte, whichever column holds it.
CREATE OR REPLACE FUNCTION hep_payload(raw text, raw_bytes bytea)
RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT coalesce(raw_bytes, convert_to(raw, 'UTF8')) $$;
