"""Alerts: rules as data, evaluation in the report's transaction, the queue, escalation,
the live stream and notifications."""
