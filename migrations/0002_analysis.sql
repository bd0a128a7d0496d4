-- SQL call analysis: sip_calls, sip_registrations and the indexes they rely on.
--
-- Design: views computed from the stored messages, not a materialised table.
--
--   sip_calls_between(from, to)          calls whose initial INVITE falls in [from, to)
--   sip_calls                            the same over all stored data (a view)
--   sip_registrations_between(from, to)  REGISTER activity per address of record
--   sip_registrations                    the same over all stored data (a view)
--   sip_messages                         the three SIP capture tables as one relation
--   sip_call_flow(call_id, from, to)     one call's messages plus its correlated legs
--
-- Why not a materialised table refreshed by the consumer: the answer would be stale or
-- wrong whenever messages arrive late or out of order (a BYE an hour later, a replay
-- from Kafka, a second capture agent), so every refresh would have to re-aggregate the
-- whole dialog anyway; it would tie the sink's write path to the analysis schema and
-- double the work of retention. Computing from the messages is always exact, and the
-- cost is bounded instead: the *_between functions are single-statement SQL functions
-- that PostgreSQL inlines into the calling query, so the time range prunes partitions
-- and uses the (create_date) and (sid, create_date) indexes, and a Call-ID or user
-- filter on the result is pushed down to an index scan. A day of data is one scan of
-- that day's partitions. The plain views are the same functions over an unbounded range:
-- right for one call (`WHERE call_id = ...` is pushed down) and for small databases;
-- use the functions for time ranges. For dashboards over months, materialise the
-- function's result per closed day (CREATE TABLE ... AS SELECT * FROM sip_calls_between).
--
-- Rules (RFC 3261) that keep the answer right:
-- * A call is a Call-ID with an initial INVITE: an INVITE request without a To tag.
--   Re-INVITEs carry a To tag and never start a call or decide its status.
-- * The deciding transaction is the initial INVITE with the highest CSeq (a UAC that is
--   challenged with 401/407 resends the INVITE with CSeq + 1 and the same Call-ID).
--   Responses belong to it when their CSeq number and method and their From tag match
--   (the From tag tells the caller's transactions from a callee's own re-INVITE, which
--   may reuse "CSeq: 1 INVITE").
-- * Retransmissions and a message captured at two hops (Kamailio siptrace mirrors both
--   legs) are counted once: every time is the first occurrence, every address the first
--   occurrence's.
-- * Final status: a 2xx if any (forked calls: one branch answered); otherwise the first
--   final response sent back towards the caller (the first INVITE's source address),
--   otherwise the first final response captured anywhere.
-- * state:
--     answered           a 2xx answered the initial INVITE
--     busy               final 486 Busy Here, 600 Busy Everywhere or 603 Decline
--     cancelled          final 487, or a CANCEL was captured and no final response
--     failed             any other final status >= 300 (404, 408 timeout, 480, 5xx, ...)
--     no_final_response  no final response captured (ringing now, or lost/timed out
--                        without the 408 being captured)
-- * pdd (post-dial delay) = first 18x - initial INVITE; setup_time = answer - INVITE;
--   duration = first BYE - answer (NULL until the BYE is captured).
-- * end_time is the first BYE for answered calls, the first CANCEL otherwise; ended_by
--   is 'caller' when the BYE's From tag is the caller's (and always for CANCEL), else
--   'callee'; ended_by_ip/port is where that request was first captured coming from.

-- Indexes for the common filters that 0001 does not already cover
-- (create_date, (sid, create_date), correlation_id, from_user, to_user, src_ip, dst_ip).
-- Created on the partitioned parents, so every partition, present or future, has them.
CREATE INDEX IF NOT EXISTS hep_proto_1_call_ruri_user_idx
    ON hep_proto_1_call (ruri_user, create_date) WHERE ruri_user IS NOT NULL;
CREATE INDEX IF NOT EXISTS hep_proto_1_call_status_idx
    ON hep_proto_1_call (status, create_date) WHERE status IS NOT NULL;
-- Initial INVITEs only: the driving set of sip_calls_between, a small fraction of rows.
CREATE INDEX IF NOT EXISTS hep_proto_1_call_initial_invite_idx
    ON hep_proto_1_call (create_date, sid) WHERE method = 'INVITE' AND to_tag IS NULL;
CREATE INDEX IF NOT EXISTS hep_proto_1_registration_status_idx
    ON hep_proto_1_registration (status, create_date) WHERE status IS NOT NULL;
CREATE INDEX IF NOT EXISTS hep_proto_1_registration_user_agent_idx
    ON hep_proto_1_registration (user_agent, create_date) WHERE user_agent IS NOT NULL;


-- The SIP capture tables as one relation. Filters on it are pushed into each table.
CREATE OR REPLACE VIEW sip_messages AS
    SELECT 'hep_proto_1_call'::text AS capture_table, id, sid, create_date, correlation_id,
           src_ip, src_port, dst_ip, dst_port, call_id, method, status, reason, cseq_num,
           cseq_method, from_user, from_tag, to_user, to_tag, ruri_user, user_agent,
           via_branch, contact_user, contact_host, expires, node_name, capture_id,
           parse_error, raw
      FROM hep_proto_1_call
    UNION ALL
    SELECT 'hep_proto_1_registration', id, sid, create_date, correlation_id,
           src_ip, src_port, dst_ip, dst_port, call_id, method, status, reason, cseq_num,
           cseq_method, from_user, from_tag, to_user, to_tag, ruri_user, user_agent,
           via_branch, contact_user, contact_host, expires, node_name, capture_id,
           parse_error, raw
      FROM hep_proto_1_registration
    UNION ALL
    SELECT 'hep_proto_1_default', id, sid, create_date, correlation_id,
           src_ip, src_port, dst_ip, dst_port, call_id, method, status, reason, cseq_num,
           cseq_method, from_user, from_tag, to_user, to_tag, ruri_user, user_agent,
           via_branch, contact_user, contact_host, expires, node_name, capture_id,
           parse_error, raw
      FROM hep_proto_1_default;


-- Calls whose initial INVITE was first captured in [p_from, p_to). Messages are read up
-- to p_to + p_max_call_length: a call longer than that shows no end (raise it for
-- very long calls; it bounds how much data a historical query reads).
-- Not STRICT and STABLE on purpose: both are required for PostgreSQL to inline it.
CREATE OR REPLACE FUNCTION sip_calls_between(
    p_from timestamptz,
    p_to timestamptz,
    p_max_call_length interval DEFAULT interval '6 hours'
)
RETURNS TABLE (
    call_id                text,
    caller                 text,
    callee                 text,
    ruri_user              text,
    state                  text,
    final_status           smallint,
    final_reason           text,
    invite_time            timestamptz,
    first_provisional_time timestamptz,
    first_ringing_time     timestamptz,
    answer_time            timestamptz,
    final_time             timestamptz,
    end_time               timestamptz,
    end_method             text,
    ended_by               text,
    ended_by_ip            inet,
    ended_by_port          integer,
    pdd                    interval,
    setup_time             interval,
    duration               interval,
    src_ip                 inet,
    src_port               integer,
    dst_ip                 inet,
    dst_port               integer,
    caller_user_agent      text,
    callee_user_agent      text,
    from_tag               text,
    to_tag                 text,
    initial_cseq           bigint,
    invite_attempts        bigint,
    messages               bigint,
    correlation_id         text
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
SELECT
    c.sid,
    c.caller,
    c.callee,
    c.ruri_user,
    CASE
        WHEN c.answer_time IS NOT NULL THEN 'answered'
        WHEN c.final_status IN (486, 600, 603) THEN 'busy'
        WHEN c.final_status = 487 THEN 'cancelled'
        WHEN c.final_status >= 300 THEN 'failed'
        WHEN c.cancel_time IS NOT NULL THEN 'cancelled'
        ELSE 'no_final_response'
    END,
    c.final_status,
    c.final_reason,
    c.invite_time,
    c.first_provisional_time,
    c.first_ringing_time,
    c.answer_time,
    c.final_time,
    CASE WHEN c.answer_time IS NOT NULL THEN c.bye_time ELSE c.cancel_time END,
    CASE
        WHEN c.answer_time IS NOT NULL THEN CASE WHEN c.bye_time IS NOT NULL THEN 'BYE' END
        WHEN c.cancel_time IS NOT NULL THEN 'CANCEL'
    END,
    CASE
        WHEN c.answer_time IS NOT NULL THEN
            CASE WHEN c.bye_time IS NULL THEN NULL
                 WHEN c.bye_from_tag IS NOT DISTINCT FROM c.from_tag THEN 'caller'
                 ELSE 'callee' END
        WHEN c.cancel_time IS NOT NULL THEN 'caller'
    END,
    CASE WHEN c.answer_time IS NOT NULL THEN c.bye_src_ip ELSE c.cancel_src_ip END,
    CASE WHEN c.answer_time IS NOT NULL THEN c.bye_src_port ELSE c.cancel_src_port END,
    c.first_ringing_time - c.invite_time,
    c.answer_time - c.invite_time,
    CASE WHEN c.answer_time IS NOT NULL THEN c.bye_time - c.answer_time END,
    c.src_ip,
    c.src_port,
    c.dst_ip,
    c.dst_port,
    c.caller_user_agent,
    c.callee_user_agent,
    c.from_tag,
    c.to_tag,
    c.initial_cseq,
    c.invite_attempts,
    c.messages,
    c.correlation_id
FROM (
    SELECT
        x.sid,
        min(x.caller) AS caller,
        min(x.callee) AS callee,
        min(x.inv_ruri_user) AS ruri_user,
        min(x.invite_time) AS invite_time,
        min(x.inv_from_tag) AS from_tag,
        min(x.initial_cseq) AS initial_cseq,
        min(x.invite_attempts) AS invite_attempts,
        min(x.inv_src_ip) AS src_ip,
        min(x.inv_src_port) AS src_port,
        min(x.inv_dst_ip) AS dst_ip,
        min(x.inv_dst_port) AS dst_port,
        min(x.caller_user_agent) AS caller_user_agent,
        min(x.create_date) FILTER (WHERE x.answers_initial AND x.status BETWEEN 100 AND 199)
            AS first_provisional_time,
        min(x.create_date) FILTER (WHERE x.answers_initial AND x.status BETWEEN 180 AND 189)
            AS first_ringing_time,
        min(x.create_date) FILTER (WHERE x.answers_initial AND x.status BETWEEN 200 AND 299)
            AS answer_time,
        coalesce(
            min(x.status) FILTER (WHERE x.answers_initial AND x.status BETWEEN 200 AND 299),
            (array_agg(x.status ORDER BY x.to_caller DESC, x.create_date, x.id)
                FILTER (WHERE x.answers_initial AND x.status >= 300))[1]
        ) AS final_status,
        coalesce(
            (array_agg(x.reason ORDER BY x.create_date, x.id)
                FILTER (WHERE x.answers_initial AND x.status BETWEEN 200 AND 299))[1],
            (array_agg(x.reason ORDER BY x.to_caller DESC, x.create_date, x.id)
                FILTER (WHERE x.answers_initial AND x.status >= 300))[1]
        ) AS final_reason,
        coalesce(
            min(x.create_date) FILTER (WHERE x.answers_initial AND x.status BETWEEN 200 AND 299),
            (array_agg(x.create_date ORDER BY x.to_caller DESC, x.create_date, x.id)
                FILTER (WHERE x.answers_initial AND x.status >= 300))[1]
        ) AS final_time,
        (array_agg(x.to_tag ORDER BY x.create_date, x.id)
            FILTER (WHERE x.answers_initial AND x.status BETWEEN 200 AND 299))[1] AS to_tag,
        -- The answering side's agent; without an answer, the first one that sent a
        -- tagged response (ringing or rejecting).
        coalesce(
            (array_agg(x.user_agent ORDER BY x.create_date, x.id)
                FILTER (WHERE x.answers_initial AND x.status BETWEEN 200 AND 299
                        AND x.user_agent IS NOT NULL))[1],
            (array_agg(x.user_agent ORDER BY x.create_date, x.id)
                FILTER (WHERE x.answers_initial AND x.to_tag IS NOT NULL
                        AND x.user_agent IS NOT NULL))[1]
        ) AS callee_user_agent,
        min(x.create_date) FILTER (WHERE x.method = 'BYE') AS bye_time,
        (array_agg(x.from_tag ORDER BY x.create_date, x.id)
            FILTER (WHERE x.method = 'BYE'))[1] AS bye_from_tag,
        (array_agg(x.src_ip ORDER BY x.create_date, x.id)
            FILTER (WHERE x.method = 'BYE'))[1] AS bye_src_ip,
        (array_agg(x.src_port ORDER BY x.create_date, x.id)
            FILTER (WHERE x.method = 'BYE'))[1] AS bye_src_port,
        min(x.create_date) FILTER (WHERE x.method = 'CANCEL') AS cancel_time,
        (array_agg(x.src_ip ORDER BY x.create_date, x.id)
            FILTER (WHERE x.method = 'CANCEL'))[1] AS cancel_src_ip,
        (array_agg(x.src_port ORDER BY x.create_date, x.id)
            FILTER (WHERE x.method = 'CANCEL'))[1] AS cancel_src_port,
        count(*) AS messages,
        (array_agg(x.correlation_id ORDER BY x.create_date, x.id)
            FILTER (WHERE x.correlation_id IS NOT NULL))[1] AS correlation_id
    FROM (
        SELECT
            inv.sid,
            inv.caller,
            inv.callee,
            inv.inv_ruri_user,
            inv.invite_time,
            inv.inv_from_tag,
            inv.initial_cseq,
            inv.invite_attempts,
            inv.inv_src_ip,
            inv.inv_src_port,
            inv.inv_dst_ip,
            inv.inv_dst_port,
            inv.caller_user_agent,
            m.id,
            m.create_date,
            m.method,
            m.status,
            m.reason,
            m.from_tag,
            m.to_tag,
            m.user_agent,
            m.src_ip,
            m.src_port,
            m.correlation_id,
            (m.status IS NOT NULL
                AND m.cseq_method = 'INVITE'
                AND m.cseq_num = inv.initial_cseq
                AND m.from_tag IS NOT DISTINCT FROM inv.inv_from_tag) AS answers_initial,
            (m.dst_ip IS NOT DISTINCT FROM inv.inv_src_ip
                AND m.dst_port IS NOT DISTINCT FROM inv.inv_src_port) AS to_caller
        FROM (
            -- One row per call: the facts of its initial INVITE, first occurrence.
            SELECT
                i.sid,
                (array_agg(i.from_user ORDER BY i.create_date, i.id))[1] AS caller,
                (array_agg(coalesce(i.to_user, i.ruri_user) ORDER BY i.create_date, i.id))[1]
                    AS callee,
                (array_agg(i.ruri_user ORDER BY i.create_date, i.id))[1] AS inv_ruri_user,
                min(i.create_date) AS invite_time,
                (array_agg(i.from_tag ORDER BY i.create_date, i.id))[1] AS inv_from_tag,
                max(i.cseq_num) AS initial_cseq,
                count(DISTINCT i.cseq_num) AS invite_attempts,
                (array_agg(i.src_ip ORDER BY i.create_date, i.id))[1] AS inv_src_ip,
                (array_agg(i.src_port ORDER BY i.create_date, i.id))[1] AS inv_src_port,
                (array_agg(i.dst_ip ORDER BY i.create_date, i.id))[1] AS inv_dst_ip,
                (array_agg(i.dst_port ORDER BY i.create_date, i.id))[1] AS inv_dst_port,
                (array_agg(i.user_agent ORDER BY i.create_date, i.id)
                    FILTER (WHERE i.user_agent IS NOT NULL))[1] AS caller_user_agent
            FROM hep_proto_1_call i
            WHERE i.method = 'INVITE'
              AND i.to_tag IS NULL
              AND i.create_date >= p_from
              AND i.create_date < p_to + p_max_call_length
            GROUP BY i.sid
            -- The call started inside the range (its first initial INVITE), and not
            -- before it: an authentication retry just after p_from of a call begun just
            -- before belongs to the range that holds its first INVITE.
            HAVING min(i.create_date) < p_to
               AND NOT EXISTS (
                   SELECT 1 FROM hep_proto_1_call e
                    WHERE e.sid = i.sid
                      AND e.method = 'INVITE'
                      AND e.to_tag IS NULL
                      AND e.create_date >= p_from - interval '5 minutes'
                      AND e.create_date < p_from)
        ) inv
        JOIN hep_proto_1_call m
          ON m.sid = inv.sid
         AND m.create_date >= p_from
         AND m.create_date < p_to + p_max_call_length
    ) x
    GROUP BY x.sid
) c
$fn$;

COMMENT ON FUNCTION sip_calls_between(timestamptz, timestamptz, interval) IS
    'One row per call (Call-ID with an initial INVITE) first seen in [from, to); see migrations/0002_analysis.sql for the rules.';

CREATE OR REPLACE VIEW sip_calls AS
    SELECT * FROM sip_calls_between('-infinity', 'infinity');

COMMENT ON VIEW sip_calls IS
    'All stored calls. Exact but unbounded: filter by call_id, or use sip_calls_between(from, to) for time ranges.';


-- REGISTER activity per address of record (the To URI) for requests and responses
-- captured in [p_from, p_to). A transaction is (Call-ID, CSeq): retransmissions and
-- two-hop captures count once. A 401/407 that the phone answered with a new REGISTER
-- (higher CSeq, same Call-ID) is a challenge, not a failure; one left unanswered is.
CREATE OR REPLACE FUNCTION sip_registrations_between(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (
    aor              text,
    "user"           text,
    domain           text,
    last_attempt     timestamptz,
    last_success     timestamptz,
    last_status      smallint,
    last_reason      text,
    attempts         bigint,
    successes        bigint,
    challenges       bigint,
    failures         bigint,
    expires          integer,
    registered_until timestamptz,
    user_agent       text,
    contact          text,
    src_ip           inet,
    src_port         integer
)
LANGUAGE sql STABLE PARALLEL SAFE
AS $fn$
SELECT
    coalesce(r.to_user || '@', '') || coalesce(r.to_domain, ''),
    r.to_user,
    r.to_domain,
    r.last_attempt,
    r.last_success,
    r.last_status,
    r.last_reason,
    r.attempts,
    r.successes,
    r.challenges,
    r.failures,
    r.expires,
    CASE WHEN r.expires > 0 THEN r.last_success + make_interval(secs => r.expires) END,
    r.user_agent,
    r.contact,
    r.src_ip,
    r.src_port
FROM (
    SELECT
        g.to_user,
        g.to_domain,
        max(g.create_date) FILTER (WHERE g.method = 'REGISTER') AS last_attempt,
        max(g.create_date) FILTER (WHERE g.status BETWEEN 200 AND 299) AS last_success,
        (array_agg(g.status ORDER BY g.create_date DESC, g.id DESC)
            FILTER (WHERE g.status >= 200))[1] AS last_status,
        (array_agg(g.reason ORDER BY g.create_date DESC, g.id DESC)
            FILTER (WHERE g.status >= 200))[1] AS last_reason,
        count(DISTINCT g.txn) FILTER (WHERE g.method = 'REGISTER') AS attempts,
        count(DISTINCT g.txn) FILTER (WHERE g.status BETWEEN 200 AND 299) AS successes,
        count(DISTINCT g.txn) FILTER (WHERE g.status IN (401, 407)) AS challenges,
        count(DISTINCT g.txn) FILTER (
            WHERE g.status >= 300
              AND NOT (g.status IN (401, 407) AND g.max_request_cseq > g.cseq_num)
        ) AS failures,
        coalesce(
            (array_agg(g.expires ORDER BY g.create_date DESC, g.id DESC)
                FILTER (WHERE g.status BETWEEN 200 AND 299 AND g.expires IS NOT NULL))[1],
            (array_agg(g.expires ORDER BY g.create_date DESC, g.id DESC)
                FILTER (WHERE g.method = 'REGISTER' AND g.expires IS NOT NULL))[1]
        ) AS expires,
        (array_agg(g.user_agent ORDER BY g.create_date DESC, g.id DESC)
            FILTER (WHERE g.method = 'REGISTER' AND g.user_agent IS NOT NULL))[1]
            AS user_agent,
        (array_agg(coalesce(g.contact_user || '@', '') || g.contact_host
                   ORDER BY g.create_date DESC, g.id DESC)
            FILTER (WHERE g.method = 'REGISTER' AND g.contact_host IS NOT NULL))[1]
            AS contact,
        (array_agg(g.src_ip ORDER BY g.create_date DESC, g.id DESC)
            FILTER (WHERE g.method = 'REGISTER'))[1] AS src_ip,
        (array_agg(g.src_port ORDER BY g.create_date DESC, g.id DESC)
            FILTER (WHERE g.method = 'REGISTER'))[1] AS src_port
    FROM (
        SELECT
            m.*,
            m.sid || ' ' || m.cseq_num AS txn,
            max(m.cseq_num) FILTER (WHERE m.method = 'REGISTER')
                OVER (PARTITION BY m.to_user, m.to_domain, m.sid) AS max_request_cseq
        FROM hep_proto_1_registration m
        WHERE m.cseq_method = 'REGISTER'
          AND m.create_date >= p_from
          AND m.create_date < p_to
    ) g
    GROUP BY g.to_user, g.to_domain
) r
$fn$;

COMMENT ON FUNCTION sip_registrations_between(timestamptz, timestamptz) IS
    'REGISTER activity per address of record in [from, to); see migrations/0002_analysis.sql.';

CREATE OR REPLACE VIEW sip_registrations AS
    SELECT * FROM sip_registrations_between('-infinity', 'infinity');

COMMENT ON VIEW sip_registrations IS
    'REGISTER activity per address of record over all stored data; filter by "user" or aor, or use sip_registrations_between(from, to).';


-- One call's SIP messages in capture order, with the legs tied to it through the HEP
-- correlation id (a B2BUA or SBC leg whose correlation id is this Call-ID, or the leg
-- this call's correlation id names). Every capture is listed, retransmissions and both
-- hops included: this is the ladder diagram's input.
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
       SELECT p_call_id
       UNION
       SELECT r.correlation_id FROM sip_messages r
        WHERE r.sid = p_call_id AND r.correlation_id IS NOT NULL
          AND r.create_date >= p_from AND r.create_date < p_to
       UNION
       SELECT r.sid FROM sip_messages r
        WHERE r.correlation_id = p_call_id
          AND r.create_date >= p_from AND r.create_date < p_to)
 ORDER BY m.create_date, m.id
$fn$;
