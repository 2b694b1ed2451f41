-- Event rates per 100 treatment sessions (issue 16): rollups the rates API reads instead
-- of every row, kept equal to a recount.
--
-- A session counts in the month and the ISO week (UTC) of its dose; sessions never dosed
-- are no treatment and count nowhere. Its dimensions are its clinic, its drug, the
-- drug's route and its dose band (analytics_dose_band). The numerator of an event type is
-- the number of sessions with at least one event of that type (so events never exceed
-- sessions):
--   kind:<kind>          a report of that kind linked to the session (its current
--                        version's session_id);
--   category:<category>  a linked adverse-event report of that category;
--   rule:<rule_id>       an alert of that rule raised or joined by a linked report or by a
--                        reading of the session (its checklist, an observation, its dose
--                        or its discharge).
-- Reports linked to no session are counted beside the rates (analytics_unlinked), in the
-- period of their occurred_at, by their own drug and dose band, never inside a rate.
--
-- Writes mark the (clinic, grain, period) they touch dirty, by trigger, in their own
-- transaction (an upsert that locks the mark until they commit). A refresh takes the
-- marks of the periods it reads, deletes them and recounts those periods, in one
-- transaction: a write that commits before the recount's statement is counted, one that
-- commits after it has marked its period again (analytics/rollups.py).

-- The dose band of a session or report (docs/safety-signals.md): esketamine by
-- its devices' doses, IV ketamine by mg/kg; others, or a dose unknown, have none.
CREATE FUNCTION analytics_dose_band(drug text, dose_mg double precision,
                                    weight_kg double precision)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN dose_mg IS NULL THEN 'unknown'
        WHEN drug = 'esketamine_nasal' THEN
            CASE WHEN dose_mg IN (28, 56, 84) THEN dose_mg::integer || ' mg' ELSE 'other' END
        WHEN drug = 'ketamine_iv' THEN
            CASE WHEN weight_kg IS NULL OR weight_kg <= 0 THEN 'unknown'
                 WHEN dose_mg / weight_kg < 0.5 THEN '< 0.5 mg/kg'
                 WHEN dose_mg / weight_kg <= 0.75 THEN '0.5-0.75 mg/kg'
                 WHEN dose_mg / weight_kg <= 1.0 THEN '0.75-1.0 mg/kg'
                 ELSE '> 1.0 mg/kg' END
        ELSE 'all doses'
    END
$$;

-- The route of a drug (the drug values of reports).
CREATE FUNCTION analytics_route(drug text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE drug
        WHEN 'esketamine_nasal' THEN 'intranasal'
        WHEN 'ketamine_iv' THEN 'intravenous'
        WHEN 'ketamine_im' THEN 'intramuscular'
        WHEN 'ketamine_oral' THEN 'oral'
        ELSE 'other'
    END
$$;

CREATE FUNCTION analytics_period(grain text, at timestamptz)
RETURNS date LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT date_trunc(grain, at AT TIME ZONE 'UTC')::date
$$;

CREATE TABLE analytics_sessions (
    clinic_id     bigint NOT NULL REFERENCES clinics (id),
    grain         text NOT NULL CHECK (grain IN ('month', 'week')),
    period_start  date NOT NULL,
    drug          text NOT NULL,
    dose_band     text NOT NULL,
    sessions      integer NOT NULL CHECK (sessions > 0),
    PRIMARY KEY (grain, period_start, clinic_id, drug, dose_band)
);
CREATE TABLE analytics_events (
    clinic_id            bigint NOT NULL REFERENCES clinics (id),
    grain                text NOT NULL CHECK (grain IN ('month', 'week')),
    period_start         date NOT NULL,
    drug                 text NOT NULL,
    dose_band            text NOT NULL,
    event_type           text NOT NULL,
    sessions_with_event  integer NOT NULL CHECK (sessions_with_event > 0),
    PRIMARY KEY (grain, period_start, clinic_id, drug, dose_band, event_type)
);
CREATE TABLE analytics_unlinked (
    clinic_id     bigint NOT NULL REFERENCES clinics (id),
    grain         text NOT NULL CHECK (grain IN ('month', 'week')),
    period_start  date NOT NULL,
    drug          text NOT NULL,
    dose_band     text NOT NULL,
    event_type    text NOT NULL,
    reports       integer NOT NULL CHECK (reports > 0),
    PRIMARY KEY (grain, period_start, clinic_id, drug, dose_band, event_type)
);
CREATE TABLE analytics_dirty (
    clinic_id     bigint NOT NULL,
    grain         text NOT NULL,
    period_start  date NOT NULL,
    marked_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, grain, period_start)
);

-- Mark a clinic's month and week of a moment dirty (nothing for a null moment).
CREATE FUNCTION analytics_mark(clinic bigint, at timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO analytics_dirty (clinic_id, grain, period_start)
    SELECT clinic, g, analytics_period(g, at)
    FROM unnest(ARRAY['month', 'week']) AS g
    WHERE at IS NOT NULL AND clinic IS NOT NULL
    ON CONFLICT (clinic_id, grain, period_start) DO UPDATE SET marked_at = now()
$$;

-- The periods a session's change touches: its dose's, before and after.
CREATE FUNCTION analytics_mark_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        PERFORM analytics_mark(OLD.clinic_id, OLD.dosed_at);
    END IF;
    PERFORM analytics_mark(NEW.clinic_id, NEW.dosed_at);
    RETURN NULL;
END;
$$;
CREATE TRIGGER treatment_sessions_analytics
    AFTER INSERT OR UPDATE OF dosed_at, dose_mg, weight_kg, drug ON treatment_sessions
    FOR EACH ROW EXECUTE FUNCTION analytics_mark_session();

-- A report version: its session's period if it names one, else its own (and, amended,
-- what its previous version named). Versions are only inserted.
CREATE FUNCTION analytics_mark_report_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    report reports%ROWTYPE;
BEGIN
    SELECT * INTO report FROM reports WHERE id = NEW.report_id;
    PERFORM analytics_mark(report.clinic_id, report.occurred_at);
    PERFORM analytics_mark(s.clinic_id, s.dosed_at)
    FROM report_versions v JOIN treatment_sessions s ON s.id::text = v.body ->> 'session_id'
    WHERE v.report_id = NEW.report_id AND v.version IN (NEW.version, NEW.version - 1)
      AND v.body ? 'session_id';
    RETURN NULL;
END;
$$;
CREATE TRIGGER report_versions_analytics
    AFTER INSERT ON report_versions
    FOR EACH ROW EXECUTE FUNCTION analytics_mark_report_version();
-- The period of a report moved by an amendment (reports.occurred_at follows the version).
CREATE FUNCTION analytics_mark_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics_mark(OLD.clinic_id, OLD.occurred_at);
    PERFORM analytics_mark(NEW.clinic_id, NEW.occurred_at);
    RETURN NULL;
END;
$$;
CREATE TRIGGER reports_analytics
    AFTER UPDATE OF occurred_at, current_version ON reports
    FOR EACH ROW EXECUTE FUNCTION analytics_mark_report();

-- An alert linked to a report or to a session's reading: the rule is an event type of
-- the session (or of the unlinked report).
CREATE FUNCTION analytics_mark_alert_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics_mark(r.clinic_id, r.occurred_at) FROM reports r WHERE r.id = NEW.report_id;
    PERFORM analytics_mark(s.clinic_id, s.dosed_at)
    FROM report_versions v JOIN treatment_sessions s ON s.id::text = v.body ->> 'session_id'
    WHERE v.report_id = NEW.report_id AND v.version = NEW.report_version
      AND v.body ? 'session_id';
    RETURN NULL;
END;
$$;
CREATE TRIGGER alert_reports_analytics
    AFTER INSERT ON alert_reports
    FOR EACH ROW EXECUTE FUNCTION analytics_mark_alert_report();
CREATE FUNCTION analytics_mark_alert_reading() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics_mark(s.clinic_id, s.dosed_at)
    FROM treatment_sessions s WHERE s.id = NEW.session_id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER alert_session_readings_analytics
    AFTER INSERT ON alert_session_readings
    FOR EACH ROW EXECUTE FUNCTION analytics_mark_alert_reading();

-- The recount of one clinic's period: what its rollup rows must hold.
CREATE FUNCTION analytics_recount(clinic bigint, grain text, period date)
RETURNS TABLE (part text, drug text, dose_band text, event_type text, n integer)
LANGUAGE sql STABLE AS $$
    WITH sessions AS (
        SELECT s.id, s.drug,
               analytics_dose_band(s.drug, s.dose_mg, s.weight_kg) AS dose_band
        FROM treatment_sessions s
        WHERE s.clinic_id = clinic AND s.dosed_at IS NOT NULL
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
        WHERE r.clinic_id = clinic AND analytics_period(grain, r.occurred_at) = period
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

-- Replace one clinic's period's rollup rows by its recount.
CREATE FUNCTION analytics_refresh(clinic bigint, grain text, period date)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM analytics_sessions a
    WHERE a.clinic_id = clinic AND a.grain = analytics_refresh.grain AND a.period_start = period;
    DELETE FROM analytics_events a
    WHERE a.clinic_id = clinic AND a.grain = analytics_refresh.grain AND a.period_start = period;
    DELETE FROM analytics_unlinked a
    WHERE a.clinic_id = clinic AND a.grain = analytics_refresh.grain AND a.period_start = period;
    WITH counted AS MATERIALIZED (
        SELECT * FROM analytics_recount(clinic, grain, period)
    ), stored_sessions AS (
        INSERT INTO analytics_sessions (clinic_id, grain, period_start, drug, dose_band, sessions)
        SELECT clinic, grain, period, c.drug, c.dose_band, c.n
        FROM counted c WHERE c.part = 'sessions'
    ), stored_events AS (
        INSERT INTO analytics_events
            (clinic_id, grain, period_start, drug, dose_band, event_type, sessions_with_event)
        SELECT clinic, grain, period, c.drug, c.dose_band, c.event_type, c.n
        FROM counted c WHERE c.part = 'events'
    )
    INSERT INTO analytics_unlinked
        (clinic_id, grain, period_start, drug, dose_band, event_type, reports)
    SELECT clinic, grain, period, c.drug, c.dose_band, c.event_type, c.n
    FROM counted c WHERE c.part = 'unlinked';
END;
$$;

-- Sessions dosed before the rollups existed: every period with one is dirty.
INSERT INTO analytics_dirty (clinic_id, grain, period_start)
SELECT DISTINCT s.clinic_id, g, analytics_period(g, s.dosed_at)
FROM treatment_sessions s, unnest(ARRAY['month', 'week']) AS g
WHERE s.dosed_at IS NOT NULL
UNION
SELECT DISTINCT r.clinic_id, g, analytics_period(g, r.occurred_at)
FROM reports r, unnest(ARRAY['month', 'week']) AS g
ON CONFLICT DO NOTHING;

GRANT SELECT, INSERT, UPDATE, DELETE
    ON analytics_sessions, analytics_events, analytics_unlinked, analytics_dirty
    TO safetyreport_app;
