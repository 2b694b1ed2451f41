-- Alert rules scoped to clinics, protected rules and two-person approval.
--
-- A rule applies to the clinics listed on it (clinic_ids), or to every clinic when the
-- list is NULL (a network rule). A clinic override is a rule of its own that names the
-- network rule it replaces at its clinics (overrides_rule_id). A protected rule cannot
-- be disabled or loosened by an override, and a change to it waits in
-- alert_rule_changes until a second user with the same rights approves it.

ALTER TABLE alert_rules
    ADD COLUMN clinic_ids bigint[]
        CHECK (clinic_ids IS NULL OR cardinality(clinic_ids) >= 1),
    ADD COLUMN overrides_rule_id text REFERENCES alert_rules (id),
    ADD COLUMN protected boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT alert_rules_override_has_clinics
        CHECK (overrides_rule_id IS NULL OR clinic_ids IS NOT NULL);
CREATE INDEX alert_rules_clinics_idx ON alert_rules USING gin (clinic_ids);
CREATE INDEX alert_rules_overrides_idx ON alert_rules (overrides_rule_id);

-- Versions keep the scope too, who approved a change (when one had to), and whether the
-- version has been recorded in the audit trail. The service audits each version in the
-- transaction that writes it; versions that arrive by migration are audited by the
-- migrate command right after it has applied the files.
ALTER TABLE alert_rule_versions
    ADD COLUMN clinic_ids bigint[],
    ADD COLUMN overrides_rule_id text,
    ADD COLUMN protected boolean NOT NULL DEFAULT false,
    ADD COLUMN approved_by text,
    ADD COLUMN change_id bigint,
    ADD COLUMN audited_at timestamptz;
UPDATE alert_rule_versions SET audited_at = changed_at WHERE changed_by <> 'system:migration';

-- Changes to protected rules, waiting for a second user's approval.
CREATE TABLE alert_rule_changes (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id            text NOT NULL CHECK (rule_id ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    action             text NOT NULL CHECK (action IN ('create', 'update', 'disable')),
    -- The rule's version the change was proposed against (NULL for a new rule).
    base_version       integer,
    clinic_ids         bigint[],
    overrides_rule_id  text,
    proposal           jsonb NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'approved', 'rejected')),
    proposed_by        bigint NOT NULL REFERENCES users (id),
    proposed_by_name   text NOT NULL,
    proposed_at        timestamptz NOT NULL DEFAULT now(),
    decided_by         bigint REFERENCES users (id),
    decided_by_name    text,
    decided_at         timestamptz,
    CHECK ((status = 'pending') = (decided_by IS NULL))
);
CREATE INDEX alert_rule_changes_pending_idx ON alert_rule_changes (rule_id)
    WHERE status = 'pending';

GRANT SELECT, INSERT, UPDATE ON alert_rule_changes TO safetyreport_app;

-- The protected default rules: hypertensive emergency, breathing, theft and loss.
-- (Suicidality has no rule yet; a later migration marks it the same way.) Protecting a
-- rule is a change: a new version, by migration.
UPDATE alert_rules SET protected = true, version = version + 1, updated_at = now()
WHERE id IN ('bp-hypertensive-crisis', 'respiratory-depression',
             'controlled-substance-theft-or-loss');
INSERT INTO alert_rule_versions
    (rule_id, version, name, severity, description, enabled, definition, changed_by,
     clinic_ids, overrides_rule_id, protected)
SELECT id, version, name, severity, description, enabled, definition, 'system:migration',
       clinic_ids, overrides_rule_id, protected
FROM alert_rules
WHERE id IN ('bp-hypertensive-crisis', 'respiratory-depression',
             'controlled-substance-theft-or-loss');
