-- Sign-in hardening: known devices, aggregated lock-outs, lock-out alerts for admins,
-- and the second factor (TOTP secrets, encrypted, and one-time recovery codes).

-- A device that has signed in successfully before: a random token in a long-lived
-- cookie (or the X-Device-Token header), bound to one user; only its SHA-256 is stored.
CREATE TABLE known_devices (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash    bytea NOT NULL UNIQUE,
    user_id       bigint NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX known_devices_user_idx ON known_devices (user_id);

-- Failures from a known device are counted on the device ('device' scope), and the
-- attempts refused while a key is locked are counted here instead of being audited
-- one by one: the next audit entry for that key carries the count.
ALTER TABLE login_throttle DROP CONSTRAINT login_throttle_scope_check;
ALTER TABLE login_throttle ADD CONSTRAINT login_throttle_scope_check
    CHECK (scope IN ('account', 'address', 'account_address', 'device'));
ALTER TABLE login_throttle ADD COLUMN refused integer NOT NULL DEFAULT 0;

-- Lock-out patterns (an account attacked from many addresses, an address guessing many
-- accounts), listed for admins at GET /api/v1/auth/lockouts. Append-only.
CREATE TABLE lockout_alerts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    raised_at     timestamptz NOT NULL DEFAULT now(),
    scope         text NOT NULL CHECK (scope IN ('account', 'address')),
    key           text NOT NULL,
    failures      integer NOT NULL,
    locked_until  timestamptz NOT NULL,
    -- Codes of the clinics of the attacked user; empty: for admins of every clinic.
    clinics       text[] NOT NULL
);
CREATE INDEX lockout_alerts_raised_idx ON lockout_alerts (raised_at DESC, id DESC);
CREATE TRIGGER lockout_alerts_append_only
    BEFORE UPDATE OR DELETE ON lockout_alerts
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- TOTP (RFC 6238): the secret encrypted with a key kept outside the database; the
-- last time step accepted, so a code is never accepted twice.
CREATE TABLE user_totp (
    user_id           bigint PRIMARY KEY REFERENCES users (id),
    secret_encrypted  bytea NOT NULL,
    enrolled_at       timestamptz NOT NULL DEFAULT now(),
    last_step         bigint NOT NULL DEFAULT 0
);

-- Recovery codes: SHA-256 of high-entropy random codes, each usable once.
CREATE TABLE totp_recovery_codes (
    user_id    bigint NOT NULL REFERENCES users (id),
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON known_devices TO safetyreport_app;
GRANT SELECT, INSERT ON lockout_alerts TO safetyreport_app;
GRANT SELECT, UPDATE ON user_totp TO safetyreport_app;
GRANT SELECT, UPDATE ON totp_recovery_codes TO safetyreport_app;
