-- What triggered an alert, and paging again when an alert is renewed.
--
-- alert_reports.trigger_values: the facts of the linked report version that the rule's
-- condition names (see alerts/triggers.py), so the queue and the detail page can say
-- "BP 210/125 mmHg". Links made before this migration have none: '{}'.
ALTER TABLE alert_reports
    ADD COLUMN trigger_values jsonb NOT NULL DEFAULT '{}'
        CHECK (jsonb_typeof(trigger_values) = 'object');

-- alerts.renewals: how many times a new report joined the open or acknowledged critical
-- or urgent alert (evaluate.py "renewed"). A page is keyed by the alert, its renewal and
-- its escalation level, so a renewal pages the on-call person again.
ALTER TABLE alerts ADD COLUMN renewals integer NOT NULL DEFAULT 0 CHECK (renewals >= 0);
ALTER TABLE pages ADD COLUMN renewal integer NOT NULL DEFAULT 0 CHECK (renewal >= 0);
ALTER TABLE pages DROP CONSTRAINT pages_alert_id_level_key;
ALTER TABLE pages ADD CONSTRAINT pages_alert_renewal_level_key UNIQUE (alert_id, renewal, level);
