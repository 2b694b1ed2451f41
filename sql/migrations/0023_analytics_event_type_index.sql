-- The rates of one event type across the network (the dashboard's view of a year of
-- every clinic, docs/performance.md): the rollup rows of that type and period range
-- through an index, not a scan of every event type's rows.
CREATE INDEX analytics_events_type_idx ON analytics_events (grain, event_type, period_start);
CREATE INDEX analytics_unlinked_type_idx ON analytics_unlinked (grain, event_type, period_start);
