-- Statistics on the session a report version names (issue 16, the benchmark at a year of
-- a 200-clinic network, docs/performance.md). The index on it (0018) is partial, and
-- PostgreSQL keeps no statistics for a partial index's expression: it guessed about 400
-- versions per session and recounted each clinic-period (analytics_recount) by reading
-- every report version in a hash join, 100-180 ms each at 85,000 linked reports. With the
-- expression's own statistics it looks each session up in the index: about 17 ms.
CREATE STATISTICS report_versions_session_stats ON (body ->> 'session_id') FROM report_versions;
ANALYZE report_versions;
