-- On call: each clinic's roster (users in order, each with the address pages go to),
-- and the pages sent to it: an outbox row per page with a ledger of every attempt.

CREATE TABLE on_call (
    clinic_id   bigint NOT NULL REFERENCES clinics (id),
    -- 1 is paged first; each escalation of an alert pages the next.
    position    integer NOT NULL CHECK (position >= 1),
    user_id     bigint NOT NULL REFERENCES users (id),
    email       text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    PRIMARY KEY (clinic_id, position),
    UNIQUE (clinic_id, user_id)
);

-- One page per alert and escalation level: the unique key is what keeps several
-- service processes from paging anyone twice for the same level.
CREATE TABLE pages (
    id               uuid PRIMARY KEY,
    alert_id         uuid NOT NULL REFERENCES alerts (id),
    clinic_id        bigint NOT NULL REFERENCES clinics (id),
    level            integer NOT NULL CHECK (level >= 0),
    position         integer NOT NULL,
    user_id          bigint NOT NULL REFERENCES users (id),
    email            text NOT NULL,
    subject          text NOT NULL,
    body             text NOT NULL,
    -- cancelled: the alert was acknowledged or resolved before the page went out.
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (alert_id, level)
);
CREATE INDEX pages_due_idx ON pages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX pages_clinic_idx ON pages (clinic_id, created_at DESC, id DESC);

-- The paging ledger: one row per attempt; error NULL means the SMTP server took it.
CREATE TABLE page_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    page_id       uuid NOT NULL REFERENCES pages (id),
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    error         text,
    duration_ms   integer
);
CREATE INDEX page_attempts_idx ON page_attempts (page_id, id);

CREATE TRIGGER page_attempts_append_only
    BEFORE UPDATE OR DELETE ON page_attempts
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

GRANT SELECT, INSERT, DELETE ON on_call TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE ON pages TO safetyreport_app;
GRANT SELECT, INSERT ON page_attempts TO safetyreport_app;
