-- Custom SIP headers in a typed column (issue 12, item 3).
--
-- `hep-ingest consume --custom-header NAME[,REGEX]` keeps the value of each configured
-- header of a SIP message in data_header under its configured name (as heplify-server's
-- CustomHeader does, so homer-app can search it) and here, one jsonb object per row:
--     SELECT call_id, custom_headers->>'X-CID' FROM hep_proto_1_call
--      WHERE custom_headers->>'X-CID' = 'a-leg@example';
-- NULL when the row has none of the configured headers (and for non-SIP rows). No
-- index: most deployments configure none; one that searches a header often adds an
-- expression index on (custom_headers->>'NAME').
--
-- Adding a nullable column without a default only changes the catalogue: no table or
-- partition is rewritten.

DO $do$
DECLARE
    capture_table text;
BEGIN
    FOR capture_table IN
        SELECT table_name FROM hep_ingest_capture_tables
         WHERE to_regclass(format('%I', table_name)) IS NOT NULL
    LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS custom_headers jsonb',
                       capture_table);
        EXECUTE format($c$COMMENT ON COLUMN %I.custom_headers IS 'Configured custom SIP headers found in the message (consume --custom-header), by configured name; NULL when none'$c$,
                       capture_table);
    END LOOP;
END
$do$;

-- Tables created from now on (a table an older release's consumer had not created yet)
-- get the column too. The creator in force is kept under a name of this migration's own,
-- whatever the migrations before this one called theirs.
ALTER FUNCTION hep_ingest_create_capture_table(text)
    RENAME TO hep_ingest_create_capture_table_before_0006;

CREATE OR REPLACE FUNCTION hep_ingest_create_capture_table(table_name text)
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    PERFORM hep_ingest_create_capture_table_before_0006(table_name);
    -- ALTER TABLE locks the table even when the column exists: only when it does not.
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = to_regclass(format('%I', table_name))
                      AND attname = 'custom_headers' AND NOT attisdropped) THEN
        EXECUTE format('ALTER TABLE %I ADD COLUMN custom_headers jsonb', table_name);
    END IF;
END
$fn$;
