-- Audit exports and signed checkpoints.
--
-- 1. Each entry keeps the exact bytes its hash covers (its canonical content), so an
--    export streams them as stored instead of re-encoding every row, and an auditor
--    recomputes the hash from what the export carries. Entries written before this
--    migration have no stored content; exports and verification recompute theirs from
--    the columns, exactly as before. Every new entry must carry it.
ALTER TABLE audit_entries ADD COLUMN content text;
ALTER TABLE audit_entries
    ADD CONSTRAINT audit_entries_content_present CHECK (content IS NOT NULL) NOT VALID;

-- 2. Checkpoints: a chain's head (sequence number and hash) at a moment, signed with the
--    service's Ed25519 key (which never enters the database). A later export or the
--    live chain proves the chain only grew since: the signed head is still in it.
CREATE TABLE audit_checkpoints (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain      text NOT NULL REFERENCES audit_chains (chain),
    seq        bigint NOT NULL CHECK (seq >= 0),
    hash       bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    key_id     text NOT NULL,
    signature  bytea NOT NULL,
    UNIQUE (chain, seq, key_id)
);
CREATE INDEX audit_checkpoints_signed_idx ON audit_checkpoints (signed_at);

CREATE TRIGGER audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

GRANT SELECT, INSERT ON audit_checkpoints TO safetyreport_app;
