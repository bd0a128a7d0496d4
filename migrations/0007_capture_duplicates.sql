-- Duplicate captures kept aside (consume --dedup-window-ms with --dedup-keep).
--
-- The same SIP message captured by two agents is stored once in its capture table; with
-- --dedup-keep its other copies land here, with every column of a capture table, so that
-- an operator can see which agent saw what (capture_id, node_name, receive_time) without
-- homer-app or the analysis views ever counting a message twice. The table is created,
-- partitioned and expired like every capture table (hep_ingest_capture_tables).
SELECT hep_ingest_create_capture_table('hep_capture_duplicates');
