-- Alerts: rules as data, grouped alerts with their history, escalation deadlines,
-- and an outbox of notifications with a ledger of every delivery attempt.

-- The current version of each rule; every change adds a row to alert_rule_versions.
CREATE TABLE alert_rules (
    id           text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    version      integer NOT NULL CHECK (version >= 1),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    severity     text NOT NULL CHECK (severity IN ('info', 'high', 'urgent', 'critical')),
    description  text NOT NULL CHECK (length(description) BETWEEN 1 AND 4000),
    enabled      boolean NOT NULL,
    -- {"kinds": [...], "when": <condition>, "pattern": null | {...}, "group_by": ..., "dea": bool}
    definition   jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alert_rule_versions (
    rule_id      text NOT NULL REFERENCES alert_rules (id),
    version      integer NOT NULL,
    name         text NOT NULL,
    severity     text NOT NULL,
    description  text NOT NULL,
    enabled      boolean NOT NULL,
    definition   jsonb NOT NULL,
    changed_by   text NOT NULL,
    changed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, version)
);

CREATE TABLE alerts (
    id                  uuid PRIMARY KEY,
    rule_id             text NOT NULL REFERENCES alert_rules (id),
    rule_version        integer NOT NULL,
    clinic_id           bigint NOT NULL REFERENCES clinics (id),
    -- Grouping: new matching reports attach to the open alert of the same rule and group.
    group_by            text NOT NULL CHECK (group_by IN ('clinic', 'patient')),
    group_key           text NOT NULL,
    -- Raised by a pattern rule (several reports) rather than by one report's values.
    from_pattern        boolean NOT NULL,
    severity            text NOT NULL CHECK (severity IN ('info', 'high', 'urgent', 'critical')),
    status              text NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
    escalation_level    integer NOT NULL DEFAULT 0,
    assigned_to         bigint REFERENCES users (id),
    report_count        integer NOT NULL DEFAULT 1,
    first_seen_at       timestamptz NOT NULL DEFAULT now(),
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    -- When an unacknowledged alert escalates next; NULL once acknowledged or resolved.
    ack_deadline        timestamptz,
    acknowledged_at     timestamptz,
    acknowledged_by     bigint REFERENCES users (id),
    resolved_at         timestamptz,
    resolved_by         bigint REFERENCES users (id),
    resolution_reason   text,
    -- Theft and loss (21 CFR 1301.76(b)): DEA written notice and Form 106 due dates.
    dea_notice_due      timestamptz,
    dea_form106_due     timestamptz,
    -- Bumped on every change, for optimistic concurrency.
    revision            integer NOT NULL DEFAULT 1,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alerts_one_unresolved_per_group
    ON alerts (rule_id, clinic_id, group_key) WHERE status <> 'resolved';
CREATE INDEX alerts_queue_idx ON alerts (clinic_id, status);
CREATE INDEX alerts_deadline_idx ON alerts (ack_deadline) WHERE status = 'open';

CREATE TABLE alert_reports (
    alert_id        uuid NOT NULL REFERENCES alerts (id),
    report_id       uuid NOT NULL REFERENCES reports (id),
    report_version  integer NOT NULL,
    added_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, report_id, report_version)
);
CREATE INDEX alert_reports_report_idx ON alert_reports (report_id);

-- Everything that happened to an alert, in order: its history, its notes, and the
-- feed of the live stream (ids are the SSE event ids).
CREATE TABLE alert_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id    uuid NOT NULL REFERENCES alerts (id),
    clinic_id   bigint NOT NULL REFERENCES clinics (id),
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert_idx ON alert_events (alert_id, id);

-- Outbox: written in the transaction that opens or escalates an alert.
CREATE TABLE notifications (
    id               uuid PRIMARY KEY,
    alert_id         uuid NOT NULL REFERENCES alerts (id),
    event            text NOT NULL,
    channel          text NOT NULL CHECK (channel IN ('webhook', 'email')),
    target           text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE status = 'pending';

-- The delivery ledger: one row per attempt, whatever its outcome.
CREATE TABLE notification_attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id  uuid NOT NULL REFERENCES notifications (id),
    attempted_at     timestamptz NOT NULL DEFAULT now(),
    status_code      integer,
    error            text,
    duration_ms      integer
);
CREATE INDEX notification_attempts_idx ON notification_attempts (notification_id, id);

CREATE TRIGGER alert_events_append_only
    BEFORE UPDATE OR DELETE ON alert_events
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER notification_attempts_append_only
    BEFORE UPDATE OR DELETE ON notification_attempts
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

GRANT SELECT, INSERT, UPDATE ON alert_rules TO safetyreport_app;
GRANT SELECT, INSERT ON alert_rule_versions TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE ON alerts TO safetyreport_app;
GRANT SELECT, INSERT ON alert_reports, alert_events, notification_attempts TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE ON notifications TO safetyreport_app;
