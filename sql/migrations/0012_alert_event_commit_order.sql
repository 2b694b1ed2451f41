-- Resuming the alert stream when event ids and commit order differ.
--
-- An event's id is taken when it is inserted, but its transaction may commit after a
-- later-numbered event's (another clinic's report, or one in flight when a primary
-- failed over). A client resuming with Last-Event-ID = N would never be sent such an
-- event below N. Each event now records its transaction (xid) and the snapshot it was
-- inserted under (inserted_snapshot). An event numbered below N that committed after N
-- was inserted is not visible in N's snapshot: the stream replays those too
-- (alerts/broker.py late_events; a client may see one again, never miss one).
--
-- Events recorded before this migration have neither (NULL): none is replayed as late.
ALTER TABLE alert_events
    ADD COLUMN xid xid8,
    ADD COLUMN inserted_snapshot pg_snapshot;
ALTER TABLE alert_events
    ALTER COLUMN xid SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN inserted_snapshot SET DEFAULT pg_current_snapshot();

-- Before the stream sends events it has read, the reading connection commits a write of
-- its own and so waits until the synchronous standby has everything before it
-- (alerts/broker.py confirm_durable): an event committed on the primary alone, its wait
-- for the standby cut short, is never streamed. A transaction that only takes an xid
-- writes no WAL and would not wait, hence a row; one per backend, so that barriers never
-- wait on each other's row lock. Technical, not patient data: not audited.
CREATE TABLE replication_barriers (
    backend_pid integer PRIMARY KEY,
    at          timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE ON replication_barriers TO safetyreport_app;
