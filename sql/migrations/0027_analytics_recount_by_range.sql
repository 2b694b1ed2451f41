-- Rollups that cost the same to keep at year six (issue 17, docs/performance.md).
--
-- The recount of one clinic's period (migration 0020) found the period's sessions and
-- unlinked reports by analytics_period(grain, time) = period: no index holds that, so
-- each recount read every session and report the clinic ever had and computed the
-- period of each. At year six (15,000 sessions a clinic) that was about 49 ms a period,
-- for every period a write marks dirty, and an hour for the data set's cold rebuild.
-- Now the period is also a range of times, [its start, the next period's start) in UTC,
-- which an index on the clinic and the time reads directly; the period's equality stays
-- beside it, so the rows counted are the same by construction.

-- Where a period (a month or an ISO week, by its first day) begins and ends, in UTC.
CREATE FUNCTION analytics_period_start(period date)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT period::timestamp AT TIME ZONE 'UTC'
$$;
CREATE FUNCTION analytics_period_end(grain text, period date)
RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (period + CASE grain WHEN 'month' THEN interval '1 month'
                                ELSE interval '1 week' END)::timestamp AT TIME ZONE 'UTC'
$$;

-- A clinic's dosed sessions by time: the sessions of a period.
CREATE INDEX treatment_sessions_clinic_dosed_idx
    ON treatment_sessions (clinic_id, dosed_at) WHERE dosed_at IS NOT NULL;

CREATE OR REPLACE FUNCTION analytics_recount(clinic bigint, grain text, period date)
RETURNS TABLE (part text, drug text, dose_band text, event_type text, n integer)
LANGUAGE sql STABLE AS $$
    WITH sessions AS (
        SELECT s.id, s.drug,
               analytics_dose_band(s.drug, s.dose_mg, s.weight_kg) AS dose_band
        FROM treatment_sessions s
        WHERE s.clinic_id = clinic AND s.dosed_at IS NOT NULL
          AND s.dosed_at >= analytics_period_start(period)
          AND s.dosed_at < analytics_period_end(grain, period)
          AND analytics_period(grain, s.dosed_at) = period
    ), linked AS (
        SELECT s.id AS session_id, r.id AS report_id, r.current_version, r.kind,
               v.body ->> 'category' AS category
        FROM sessions s
        JOIN report_versions v ON v.body ? 'session_id' AND v.body ->> 'session_id' = s.id::text
        JOIN reports r ON r.id = v.report_id AND r.current_version = v.version
    ), session_events AS (
        SELECT session_id, 'kind:' || kind AS event_type FROM linked
        UNION
        SELECT session_id, 'category:' || category FROM linked WHERE category IS NOT NULL
        UNION
        SELECT l.session_id, 'rule:' || a.rule_id
        FROM linked l
        JOIN alert_reports ar ON ar.report_id = l.report_id
        JOIN alerts a ON a.id = ar.alert_id
        UNION
        SELECT sr.session_id, 'rule:' || a.rule_id
        FROM sessions s
        JOIN alert_session_readings sr ON sr.session_id = s.id
        JOIN alerts a ON a.id = sr.alert_id
    ), unlinked AS (
        SELECT r.id, v.body ->> 'drug' AS drug,
               analytics_dose_band(v.body ->> 'drug', (v.body ->> 'dose_mg')::double precision,
                                   (v.body ->> 'weight_kg')::double precision) AS dose_band,
               r.kind, v.body ->> 'category' AS category
        FROM reports r
        JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
        WHERE r.clinic_id = clinic
          AND r.occurred_at >= analytics_period_start(period)
          AND r.occurred_at < analytics_period_end(grain, period)
          AND analytics_period(grain, r.occurred_at) = period
          AND NOT v.body ? 'session_id'
    ), unlinked_events AS (
        SELECT id, drug, dose_band, 'kind:' || kind AS event_type FROM unlinked
        UNION
        SELECT id, drug, dose_band, 'category:' || category FROM unlinked
        WHERE category IS NOT NULL
        UNION
        SELECT u.id, u.drug, u.dose_band, 'rule:' || a.rule_id
        FROM unlinked u
        JOIN alert_reports ar ON ar.report_id = u.id
        JOIN alerts a ON a.id = ar.alert_id
    )
    SELECT 'sessions', drug, dose_band, '', count(*)::integer
    FROM sessions GROUP BY drug, dose_band
    UNION ALL
    SELECT 'events', s.drug, s.dose_band, e.event_type, count(*)::integer
    FROM session_events e JOIN sessions s ON s.id = e.session_id
    GROUP BY s.drug, s.dose_band, e.event_type
    UNION ALL
    SELECT 'unlinked', coalesce(drug, 'unknown'), dose_band, event_type, count(*)::integer
    FROM unlinked_events GROUP BY 2, dose_band, event_type
$$;
