-- Safety signals (issue 16): the "rate above control limit" alert. A periodic check
-- (analytics/signals.py) compares each clinic's rate of each event type in the last
-- complete month and week with the network's p-chart limits and raises this rule's
-- alert for a point above the upper 3-sigma limit; signal_alerts holds one row per
-- (clinic, event type, grain, period) ever raised, inserted in the alert's transaction,
-- so a second run or a second process raises nothing again.

CREATE TABLE signal_alerts (
    clinic_id     bigint NOT NULL REFERENCES clinics (id),
    event_type    text NOT NULL,
    grain         text NOT NULL CHECK (grain IN ('month', 'week')),
    period_start  date NOT NULL,
    alert_id      uuid REFERENCES alerts (id),
    sessions      integer NOT NULL,
    events        integer NOT NULL,
    raised_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, event_type, grain, period_start)
);
GRANT SELECT, INSERT, UPDATE ON signal_alerts TO safetyreport_app;

-- The rule is not a report rule: no report has the fact "signal", so it never matches
-- one; the check raises it with the rate, the limit and the chart's link as details.
INSERT INTO alert_rules (id, version, name, severity, description, enabled, definition,
                         protected, guidance, ack_minutes)
VALUES ('rate-above-control-limit', 1, 'Event rate above the control limit', 'high',
    'A clinic''s rate of an event type per treatment session, in the last complete month or week, is above the upper 3-sigma limit of a p-chart whose centre line is the network''s pooled rate of that period (with at least SAFETYREPORT_SIGNAL_MIN_SESSIONS sessions, default 20). Raised by the periodic signal check, once per clinic, event type and period, never by a report. Source: the statistical process control convention of 3-sigma limits (Shewhart p-chart; Montgomery, Introduction to Statistical Quality Control).',
    true, '{"kinds": [], "when": {"field": "signal", "op": "==", "value": true}, "pattern": null, "group_by": "clinic", "dea_deadlines": false}',
    false,
    'Open the control chart of the event type (the link in the alert), review the period''s sessions and reports with the clinical lead, look for a common cause (a protocol, a dose band, a staff change, a recording habit) and record what was found and done.',
    NULL);

INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected, guidance, ack_minutes)
SELECT r.id, r.version, r.name, r.severity, r.description, r.enabled, r.definition,
       'system:migration', r.clinic_ids, r.overrides_rule_id, r.protected, r.guidance,
       r.ack_minutes
FROM alert_rules r WHERE r.id = 'rate-above-control-limit';
