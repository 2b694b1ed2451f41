"""The pgbench script of the ingest benchmark: the SQL the service runs for one report.

One pgbench transaction is one ``POST /api/v1/reports``, statement for statement: the
token lookup (its own autocommit transaction, as in the service), then one transaction
with the idempotency claim (lock, placeholder row, live record), one statement with the
report, its first version, the clinic's chain head locked and the candidate rules, the
pattern rules' queries, for every rule that fires the alert upsert, its report links and
count, the alert event with its NOTIFY, the outbox row; then the held audit entries (the
report's and each alert event's) with the chain's new head in one statement, and the
stored response. The audit entries' contents are made where the service makes them (the
report's in the first statement, each event's in its statement) and kept in variables
until the end, as the service holds them in memory. (Keep it in step with the
service: when a statement there changes, change it here.)

The SQL is copied from the service (the functions are named above each part) with the
values the service computes in Python computed here in SQL: the audit hash
(``sha256`` of a JSON text of the same fields), the reading grade, and which rules fire,
which follows from the reading class, drawn with the mix of ``bench/ingest.lua``. The
pattern rules run their candidate queries like the service; the service then filters
the rows in Python, pgbench in SQL.

Variables: ``n_clinics`` and ``n_patients`` (``-D``), and pgbench's own ``client_id``.
Client ``i`` uses the session ``sha256('pgbench-<i>')`` of the nurse of clinic
``C<i % n_clinics + 1>``; bench/ingest.py creates them.
"""

# New rows' keys are time-ordered, as the service's (safetyreport.ids): PostgreSQL 18's
# uuidv7(), on the embedded server pgbench runs on.
# ruff: noqa: S608 (SQL text built from constants, for pgbench; no input)
from __future__ import annotations

# ``\set`` draws the reading like ingest.lua: class 1 normal (50 %), 2 pre-dose hold
# (20 %), 3 CTCAE grade 3 (17 %), 4 severe hypertension (7 %), 5 hypertensive emergency
# (6 %, with a severe headache).
_DRAW = r"""
\set ci :client_id % :n_clinics + 1
\set cls random(1, 100)
\set patient random(1, :n_patients)
\set key random(1, 9000000000000000000)
\set ago random(0, 21600)
\set mad random(0, 240)
\set pulse random(55, 120)
\set drug random(1, 4)
\set outcome random(1, 3)
\if :cls <= 50
\set phase random(1, 3)
\set sys random(100, 139)
\set dia random(60, 89)
\set reading 1
\elif :cls <= 70
\set phase 1
\set sys random(141, 159)
\set dia random(70, 89)
\set reading 2
\elif :cls <= 87
\set phase 2
\set sys random(160, 179)
\set dia random(80, 99)
\set reading 3
\elif :cls <= 94
\set phase 2
\set sys 180
\set dia random(90, 109)
\set reading 4
\else
\set phase 2
\set sys random(181, 220)
\set dia random(95, 119)
\set reading 5
\endif
"""

# Audit entries are held until the end of the report (audit.chain.holding): slot 0 the
# report's, 1 to 3 the alert events' (at most one single-report rule and two patterns).
_SLOTS = (1, 2, 3)
_EMPTY_SLOTS = ", ".join(f"''::text AS c{k}, ''::bytea AS h{k}, ''::bytea AS p{k}" for k in _SLOTS)

# auth.service.resolve_token (the pool's autocommit connection).
_RESOLVE = rf"""
WITH s AS (
    SELECT id, user_id, last_seen_at FROM sessions
    WHERE token_hash = sha256(convert_to('pgbench-' || :client_id::int, 'UTF8'))
      AND revoked_at IS NULL
      AND expires_at > now() AND last_seen_at > now() - '30 minutes'::interval
), touched AS (
    UPDATE sessions SET last_seen_at = now()
    FROM s WHERE sessions.id = s.id AND s.last_seen_at < now() - '1 minute'::interval
)
SELECT u.id AS uid, u.username, u.role, u.all_clinics,
    (SELECT coalesce(jsonb_agg(jsonb_build_array(c.id, c.code, c.name) ORDER BY c.code), '[]')
       FROM clinics c
      WHERE u.all_clinics
         OR c.id IN (SELECT uc.clinic_id FROM user_clinics uc WHERE uc.user_id = u.id)
    ) AS clinics,
    -- The held audit entries' slots (1-3: alert events), empty until an event fills one.
    {_EMPTY_SLOTS}
FROM s JOIN users u ON u.id = s.user_id
WHERE u.disabled_at IS NULL
\gset
"""

_KEY = "('pgbench-' || :key::bigint)"
_CLINIC = "('C' || :ci::int)"
# (No colon before a letter inside a literal: pgbench would take it for a variable.)
_CHAIN = "('clinic:' || 'C' || :ci::int)"
_PATIENT = "('PT-' || lpad(:patient::text, 5, '0'))"

# idempotency.write_once: the claim (its lock, a placeholder row, the live record).
_CLAIM = rf"""
BEGIN;
WITH lock AS (
    SELECT pg_try_advisory_xact_lock(:key::bigint) AS taken
), claimed AS (
    INSERT INTO idempotency_keys
        (user_id, key, request_hash, response_status, response_body, expires_at)
    SELECT :uid::bigint, {_KEY},
           sha256(convert_to('POST /api/v1/reports ' || :key::bigint, 'UTF8')),
           0, '', now() + '24 hours'::interval
    FROM lock WHERE taken
    ON CONFLICT (user_id, key) DO UPDATE
        SET request_hash = excluded.request_hash, response_status = 0, response_body = '',
            created_at = now(), expires_at = excluded.expires_at
        WHERE idempotency_keys.expires_at <= now()
    RETURNING 1
)
SELECT lock.taken, EXISTS (SELECT FROM claimed) AS claimed,
       k.request_hash, k.response_status, k.response_body
FROM lock LEFT JOIN idempotency_keys k
    ON lock.taken AND k.user_id = :uid::bigint AND k.key = {_KEY} AND k.expires_at > now();
"""


def _entry_content(
    action: str, object_type: str, object_id: str, details: str, *, seq: str, prev: str, now: str
) -> str:
    """The canonical content of an audit entry (audit.chain.canonical_content): the
    service encodes it in Python, here SQL does."""
    return f"""jsonb_build_object(
        'chain', {_CHAIN}, 'seq', {seq}, 'recorded_at', {now},
        'actor_id', :uid::bigint, 'actor', :username::text, 'actor_role', 'nurse',
        'action', {action}, 'object_type', '{object_type}', 'object_id', {object_id},
        'clinic', {_CLINIC}, 'client_addr', '127.0.0.1', 'details', {details},
        'prev_hash', encode({prev}, 'hex'))::text"""


# reports.service.insert_report's first statement: the report and its version, the
# clinic's chain head locked, the candidate rules (one row each: \aset keeps the last);
# and here the report's audit entry (slot 0) made from the head, held until the end.
def _insert() -> str:
    entry = _entry_content(
        "'report.created'",
        "report",
        "report.id::text",
        "jsonb_build_object('kind', 'blood_pressure', 'version', 1, 'body_sha256',"
        " encode(sha256(convert_to(report.id::text, 'UTF8')), 'hex'))",
        seq="head.last_seq + 1",
        prev="head.last_hash",
        now="head.now",
    )
    return rf"""
WITH new AS (
    SELECT uuidv7() AS id,
           date_trunc('second', now()) - make_interval(secs => :ago::int) AS occurred_at
), report AS (
    INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, current_version,
                         created_by)
    SELECT new.id, :ci::bigint, 'blood_pressure', {_PATIENT}, new.occurred_at, 1,
           :uid::bigint
    FROM new
    RETURNING id, occurred_at, created_at, updated_at
), version AS (
    INSERT INTO report_versions (report_id, version, body, hypertension_reading_grade,
                                 created_by)
    SELECT new.id, 1, jsonb_build_object(
        'clinic', {_CLINIC}, 'patient_ref', {_PATIENT}, 'occurred_at', new.occurred_at,
        'drug',
        (ARRAY['esketamine_nasal', 'ketamine_iv', 'ketamine_im', 'ketamine_oral'])[:drug::int],
        'outcome', (ARRAY['resolved', 'recovering', 'ongoing'])[:outcome::int],
        'minutes_after_dose', :mad::int, 'age_band', 'under_65',
        'phase', (ARRAY['pre_dose', 'post_dose', 'discharge'])[:phase::int],
        'systolic', :sys::int, 'diastolic', :dia::int, 'pulse', :pulse::int,
        'kind', 'blood_pressure')
        || CASE WHEN :reading::int = 5
                THEN '{{"symptoms": ["severe_headache"]}}'::jsonb ELSE '{{}}'::jsonb END,
        CASE WHEN :reading::int = 5 THEN 4 ELSE
        greatest(CASE WHEN :sys::int >= 160 THEN 3 WHEN :sys::int >= 140 THEN 2
                      WHEN :sys::int >= 120 THEN 1 ELSE 0 END,
                 CASE WHEN :dia::int >= 100 THEN 3 WHEN :dia::int >= 90 THEN 2
                      WHEN :dia::int >= 80 THEN 1 ELSE 0 END) END,
        :uid::bigint
    FROM new
    RETURNING created_at
), head AS (
    SELECT last_seq, last_hash, clock_timestamp() AS now
    FROM audit_chains WHERE chain = {_CHAIN} FOR UPDATE
), rules AS (
    SELECT r.id, r.version, r.severity, r.enabled, r.clinic_ids IS NULL AS network,
           r.overrides_rule_id, r.protected OR coalesce(b.protected, false) AS protected,
           r.ack_minutes, r.definition::text AS definition
    FROM alert_rules r LEFT JOIN alert_rules b ON b.id = r.overrides_rule_id
    WHERE (r.clinic_ids IS NULL AND r.enabled) OR r.clinic_ids @> ARRAY[:ci::bigint]
), entry AS (
    SELECT {entry} AS content FROM report, head
)
SELECT report.id AS rid, report.occurred_at AS occ, report.created_at, report.updated_at,
       version.created_at AS version_created_at,
       head.last_seq + 1 AS seq, head.now, head.last_hash AS p0, entry.content AS c0,
       sha256(convert_to(entry.content, 'UTF8')) AS h0,
       sha256(convert_to(entry.content, 'UTF8')) AS hash,
       rules.id AS rule_id, rules.definition AS rule_definition
FROM report CROSS JOIN version CROSS JOIN head CROSS JOIN entry LEFT JOIN rules ON true
ORDER BY rules.id
\aset
"""


def _write_held(content: bool) -> str:
    """audit.chain._write_held: the held entries (slot 0, and each alert event's) and the
    chain's new head in one statement."""
    slots = ", ".join(f"(:c{k}::text, :h{k}::bytea, :p{k}::bytea)" for k in (0, *_SLOTS))
    content_column = ", content" if content else ""
    content_value = ", e.c" if content else ""
    return f"""
WITH e (c, h, p) AS (
    VALUES {slots}
), entries AS (
    INSERT INTO audit_entries (
        chain, seq, recorded_at, actor_id, actor, actor_role, action,
        object_type, object_id, clinic, client_addr, details, prev_hash, hash{content_column}
    )
    SELECT f->>'chain', (f->>'seq')::bigint, (f->>'recorded_at')::timestamptz,
           (f->>'actor_id')::bigint, f->>'actor', f->>'actor_role', f->>'action',
           f->>'object_type', f->>'object_id', f->>'clinic', f->>'client_addr',
           f->'details', e.p, e.h{content_value}
    FROM e, LATERAL (SELECT nullif(e.c, '')::jsonb AS f) AS j WHERE e.c <> ''
)
UPDATE audit_chains SET last_seq = :seq::bigint, last_hash = :hash::bytea
WHERE chain = {_CHAIN};
"""


# alerts.evaluate._CANDIDATES, with the rule's window, group and kinds.
_SEVERITY_RANK = (
    "(CASE a.severity WHEN 'info' THEN 0 WHEN 'high' THEN 1 WHEN 'urgent' THEN 2"
    " WHEN 'critical' THEN 3 END)"
)


def _candidates(window: str, patient: str, kinds: str, named: str, *, severity: bool) -> str:
    """The candidate rows with the ``named`` body fields; the alert severity of each only
    for conditions that use it."""
    alert_severity = (
        f"""(SELECT a.severity FROM alert_reports ar JOIN alerts a ON a.id = ar.alert_id
         WHERE ar.report_id = r.id AND ar.report_version = r.current_version
           AND NOT a.from_pattern
         ORDER BY {_SEVERITY_RANK} DESC
         LIMIT 1)"""
        if severity
        else "NULL::text"
    )
    return f"""
SELECT r.id, r.current_version, r.kind, r.occurred_at, r.patient_ref,
       v.hypertension_reading_grade,
       (SELECT jsonb_object_agg(f, v.body -> f) FROM unnest({named}::text[]) AS f
         WHERE v.body ? f) AS named,
       {alert_severity} AS alert_severity
FROM reports r
JOIN report_versions v ON v.report_id = r.id AND v.version = r.current_version
WHERE r.clinic_id = :ci::bigint
  AND r.occurred_at > :occ::timestamptz - '{window}'::interval
  AND r.occurred_at < :occ::timestamptz + '{window}'::interval
  AND ({patient}::text IS NULL OR r.patient_ref = {patient})
  AND (cardinality({kinds}::text[]) = 0 OR r.kind = ANY({kinds}::text[]))"""


_ONE_REPORT = "SELECT :rid::uuid, 1"
_ACK = {"critical": "15 minutes", "urgent": "60 minutes", "high": "24 hours"}


def _raise(
    rule: str,
    severity: str,
    group_by: str,
    links: str,
    *,
    pattern: bool,
    outbox: bool,
    slot: int,
) -> str:
    """alerts.evaluate._raise and alerts.events.record for one rule that fired; its audit
    entry is made in the event's statement and held in ``slot`` (written at the end)."""
    group_key = _PATIENT if group_by == "patient" else "'clinic'"
    action = "(CASE WHEN :opened::int = 1 THEN 'opened' ELSE 'matched' END)"
    details = f"""jsonb_build_object('rule_id', '{rule}', 'rule_version', 1,
        'severity', '{severity}', 'report_id', :rid::text, 'report_version', 1,
        'report_count', :report_count::int)"""
    entry = _entry_content(
        "('alert.' || " + action + ")",
        "alert",
        ":aid::text",
        f"({details} || jsonb_build_object('event_id', event.id))",
        seq=":seq::bigint + 1",
        prev=":hash::bytea",
        now=":now::timestamptz",
    )
    # events.enqueue: one outbox row per webhook (the benchmark configures one).
    notification = rf"""\if :opened
INSERT INTO notifications (id, alert_id, event, channel, target, payload)
SELECT uuidv7(), :aid::uuid, 'opened', 'webhook', 'http://127.0.0.1/hook',
    jsonb_build_object('event', 'opened', 'event_id', :eid::bigint,
                       'alert', to_jsonb(a) - 'clinic_id', 'details', {details},
                       'notification_id', gen_random_uuid())
FROM alerts a WHERE a.id = :aid::uuid;
\endif
"""
    return rf"""
INSERT INTO alerts (id, rule_id, rule_version, clinic_id, group_by, group_key, from_pattern,
                    severity, status, ack_deadline, dea_notice_due, dea_form106_due)
VALUES (uuidv7(), '{rule}', 1, :ci::bigint, '{group_by}', {group_key}, {pattern},
        '{severity}', 'open', now() + '{_ACK[severity]}'::interval, NULL, NULL)
ON CONFLICT (rule_id, clinic_id, group_key) WHERE status <> 'resolved'
DO UPDATE SET last_seen_at = now(), updated_at = now(), revision = alerts.revision + 1
RETURNING id AS aid, (xmax = 0)::int AS opened
\gset
WITH linked AS (
    INSERT INTO alert_reports (alert_id, report_id, report_version)
    SELECT :aid::uuid, l.id, l.version FROM ({links}) AS l(id, version)
    ON CONFLICT DO NOTHING
    RETURNING report_id
)
UPDATE alerts SET report_count = (
    SELECT count(DISTINCT links.report_id) FROM (
        SELECT report_id FROM alert_reports WHERE alert_id = :aid::uuid
        UNION ALL
        SELECT report_id FROM linked
    ) AS links
)
WHERE id = :aid::uuid RETURNING report_count
\gset
WITH alert AS (
    SELECT a.id, a.rule_id, a.rule_version, r.name AS rule_name, a.severity, a.status,
           a.escalation_level, c.code AS clinic, a.group_by, a.group_key, a.report_count,
           a.first_seen_at, a.last_seen_at, a.ack_deadline, a.dea_notice_due,
           a.dea_form106_due, a.clinic_id
    FROM alerts a JOIN alert_rules r ON r.id = a.rule_id JOIN clinics c ON c.id = a.clinic_id
    WHERE a.id = :aid::uuid
), event AS (
    INSERT INTO alert_events (alert_id, clinic_id, actor, action, details)
    SELECT :aid::uuid, alert.clinic_id, :username::text, {action}, {details} FROM alert
    RETURNING id
), notified AS (
    SELECT pg_notify('alert_events', event.id::text) FROM event
)
SELECT event.id AS eid, :seq::bigint + 1 AS seq, :hash::bytea AS p{slot}, e.content AS c{slot},
       sha256(convert_to(e.content, 'UTF8')) AS h{slot},
       sha256(convert_to(e.content, 'UTF8')) AS hash
FROM alert, event, notified, LATERAL (SELECT {entry} AS content) AS e
\gset
{notification if outbox else ""}"""


def _matching(candidates: str, condition: str, name: str, *, count: str = "*") -> str:
    """One scan of the candidate rows: how many match (rows, or ``count``), and their ids
    and versions.

    (The service receives every candidate row and keeps the matching ones in Python.)
    """
    return (
        f"SELECT count({count}) FILTER (WHERE {condition}) AS {name}_n,\n"
        f"  coalesce(array_agg(c.id) FILTER (WHERE {condition}), '{{}}') AS {name}_ids,\n"
        f"  coalesce(array_agg(c.current_version) FILTER (WHERE {condition}), '{{}}')"
        f" AS {name}_versions\n"
        f"FROM ({candidates}) c\n\\gset\n"
    )


def _links(name: str) -> str:
    return f"SELECT * FROM unnest(:{name}_ids::uuid[], :{name}_versions::int[])"


def _patterns(outbox: bool) -> str:
    """The two pattern rules a reading of systolic 180 or more (urgent, critical) runs."""
    cluster = _candidates("7 days", "NULL", "'{}'", "'{phase,systolic}'", severity=False)
    repeated = _candidates("30 days", _PATIENT, "'{}'", "'{alert_severity}'", severity=True)
    return (
        # pattern-blood-pressure-cluster: post-dose readings of systolic 180 or more from
        # 3 or more distinct patients.
        _matching(
            cluster,
            "c.named->>'phase' = 'post_dose' AND (c.named->>'systolic')::int >= 180",
            "cluster",
            count="DISTINCT c.patient_ref",
        )
        + "\\if :cluster_n >= 3\n"
        + _raise(
            "pattern-blood-pressure-cluster",
            "urgent",
            "clinic",
            _links("cluster"),
            pattern=True,
            outbox=outbox,
            slot=2,
        )
        + "\\endif\n"
        # pattern-patient-repeated-urgent: 2 or more urgent or critical reports.
        + _matching(repeated, "c.alert_severity IN ('urgent', 'critical')", "repeated")
        + "\\if :repeated_n >= 2\n"
        + _raise(
            "pattern-patient-repeated-urgent",
            "urgent",
            "patient",
            _links("repeated"),
            pattern=True,
            outbox=outbox,
            slot=3,
        )
        + "\\endif\n"
    )


# idempotency._STORE into the claimed row (the response is built from what was
# written), then commit.
_FINISH = """
UPDATE idempotency_keys
SET response_status = 201, response_body = convert_to(repeat('x', 1100), 'UTF8')
WHERE user_id = :uid::bigint AND key = ('pgbench-' || :key::bigint);
END;
"""


def pgbench_script(*, audit_content: bool, outbox: bool = True) -> str:
    """The script. ``audit_content``: audit entries store their canonical content;
    ``outbox``: a webhook is configured, so opened alerts write an outbox row."""

    def single(rule: str, severity: str) -> str:
        return _raise(rule, severity, "patient", _ONE_REPORT, pattern=False, outbox=outbox, slot=1)

    rules = (
        "\\if :reading = 2\n"
        + single("bp-pre-dose-hold", "high")
        + "\\elif :reading = 3\n"
        + single("bp-ctcae-grade-3", "high")
        + "\\elif :reading = 4\n"
        + single("bp-severe-hypertension", "urgent")
        + _patterns(outbox)
        + "\\elif :reading = 5\n"
        + single("bp-hypertensive-crisis", "critical")
        + _patterns(outbox)
        + "\\endif\n"
    )
    return _DRAW + _RESOLVE + _CLAIM + _insert() + rules + _write_held(audit_content) + _FINISH


# The smallest durable write of a report: one statement inserting the report row and an
# audit entry for it, no lock, no rule, no version; each client appends to a chain of its
# own under a random sequence number. The physical limit of the machine for ingest: what
# a commit (a WAL flush) of the two rows costs, with nothing else in the transaction.
MINIMAL_WRITE = r"""
\set key random(1, 9000000000000000000)
WITH report AS (
    INSERT INTO reports (id, clinic_id, kind, patient_ref, occurred_at, current_version,
                         created_by)
    VALUES (uuidv7(), :clinic::bigint, 'blood_pressure', 'PT-00001', now(), 1,
            :uid::bigint)
    RETURNING id
)
INSERT INTO audit_entries (chain, seq, recorded_at, actor, action, object_type, object_id,
                           details, prev_hash, hash, content)
SELECT 'minimal-' || :client_id::int, :key::bigint, now(), 'pgbench', 'report.created',
       'report', report.id::text, '{}', sha256(''), sha256(convert_to(report.id::text, 'UTF8')),
       report.id::text
FROM report;
"""


if __name__ == "__main__":
    print(pgbench_script(audit_content=True))
