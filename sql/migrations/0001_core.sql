-- Core schema: clinics, users and sessions, reports with versions, idempotency keys,
-- and the hash-chained, append-only audit trail.
-- Runs as the schema owner; the application role safetyreport_app (created by the
-- migration runner) gets only the privileges granted at the end of this file.

CREATE TABLE clinics (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code        text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9_-]{1,32}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9._-]{1,64}$'),
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('nurse', 'safety_officer', 'auditor', 'admin')),
    -- Only auditors and admins may be granted every clinic at once.
    all_clinics    boolean NOT NULL DEFAULT false
                   CHECK (NOT all_clinics OR role IN ('auditor', 'admin')),
    disabled_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_clinics (
    user_id    bigint NOT NULL REFERENCES users (id),
    clinic_id  bigint NOT NULL REFERENCES clinics (id),
    PRIMARY KEY (user_id, clinic_id)
);

-- Opaque bearer tokens; only their SHA-256 is stored.
CREATE TABLE sessions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash    bytea NOT NULL UNIQUE,
    user_id       bigint NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

-- Failed-login counters: per account and address pair, per account, per address.
CREATE TABLE login_throttle (
    scope             text NOT NULL CHECK (scope IN ('account', 'address', 'account_address')),
    key               text NOT NULL,
    failures          integer NOT NULL,
    last_failure_at   timestamptz NOT NULL,
    locked_until      timestamptz,
    PRIMARY KEY (scope, key)
);

CREATE TABLE reports (
    id               uuid PRIMARY KEY,
    clinic_id        bigint NOT NULL REFERENCES clinics (id),
    kind             text NOT NULL CHECK (kind IN ('blood_pressure', 'dissociation', 'misuse_concern')),
    -- Current values, copied from the newest version for filtering and ordering.
    patient_ref      text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    current_version  integer NOT NULL CHECK (current_version >= 1),
    created_by       bigint NOT NULL REFERENCES users (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reports_clinic_occurred_idx ON reports (clinic_id, occurred_at DESC, id DESC);
CREATE INDEX reports_occurred_idx ON reports (occurred_at DESC, id DESC);
CREATE INDEX reports_clinic_patient_idx ON reports (clinic_id, patient_ref);

-- Every version of a report, never changed once written.
CREATE TABLE report_versions (
    report_id    uuid NOT NULL REFERENCES reports (id),
    version      integer NOT NULL CHECK (version >= 1),
    body         jsonb NOT NULL,
    ctcae_grade  smallint CHECK (ctcae_grade BETWEEN 0 AND 4),
    reason       text,
    created_by   bigint NOT NULL REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (report_id, version),
    CHECK ((version = 1) = (reason IS NULL))
);

CREATE TABLE idempotency_keys (
    user_id          bigint NOT NULL REFERENCES users (id),
    key              text NOT NULL,
    request_hash     bytea NOT NULL,
    response_status  smallint NOT NULL,
    response_body    bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);

-- Audit trail: one hash chain per clinic ('clinic:CODE') plus 'global'.
-- The head row is locked for every append, so a chain never forks.
CREATE TABLE audit_chains (
    chain      text PRIMARY KEY,
    last_seq   bigint NOT NULL,
    last_hash  bytea NOT NULL
);

CREATE TABLE audit_entries (
    chain        text NOT NULL,
    seq          bigint NOT NULL CHECK (seq >= 1),
    recorded_at  timestamptz NOT NULL,
    actor_id     bigint,
    actor        text NOT NULL,
    actor_role   text,
    action       text NOT NULL,
    object_type  text,
    object_id    text,
    clinic       text,
    client_addr  text,
    details      jsonb NOT NULL,
    prev_hash    bytea NOT NULL,
    hash         bytea NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX audit_entries_recorded_idx ON audit_entries (recorded_at);

-- Append-only, enforced by the database: UPDATE, DELETE and TRUNCATE fail for
-- everyone, and the application role is granted only SELECT and INSERT.
CREATE FUNCTION forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is not allowed: the table is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_entries_append_only
    BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
CREATE TRIGGER report_versions_append_only
    BEFORE UPDATE OR DELETE ON report_versions
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER report_versions_no_truncate
    BEFORE TRUNCATE ON report_versions
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Privileges of the application role: nothing it does not need.
GRANT USAGE ON SCHEMA public TO safetyreport_app;
GRANT SELECT, INSERT ON clinics, users, user_clinics TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE ON sessions TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON login_throttle TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE ON reports TO safetyreport_app;
GRANT SELECT, INSERT ON report_versions TO safetyreport_app;
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO safetyreport_app;
GRANT SELECT, INSERT, UPDATE ON audit_chains TO safetyreport_app;
GRANT SELECT, INSERT ON audit_entries TO safetyreport_app;

-- The chain for actions tied to no clinic exists from the start; clinic chains are
-- created with their clinic. Genesis: sequence 0 with a hash of 32 zero bytes.
INSERT INTO audit_chains (chain, last_seq, last_hash) VALUES ('global', 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- The service checks the schema version before it serves.
GRANT SELECT ON schema_migrations TO safetyreport_app;
