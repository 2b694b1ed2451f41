"""Every limit on alert rules, in one place.

Each report is evaluated against the rules in force for its clinic, on the event loop of
the request that stored it. These limits bound that work whatever a rule's author
writes: a rule beyond any of them is refused with a 422 naming the limit. The defaults
leave ample room over the 37 default rules.
"""

from __future__ import annotations

# A rule as JSON (name, description, definition and all), in bytes.
MAX_RULE_BYTES = 16_384
# Values in one `in`, `not_in` or `any_of` list.
MAX_LIST_VALUES = 200
# Characters in one text value or field name of a condition.
MAX_TEXT_CHARS = 200
# How deep conditions nest, and how many condition nodes one rule has.
MAX_CONDITION_DEPTH = 8
MAX_CONDITION_NODES = 100
# A pattern rule's window, in days (the reports it looks back over).
MAX_PATTERN_WINDOW_DAYS = 90
# Clinics one rule lists.
MAX_RULE_CLINICS = 500
# Enabled rules in force for one clinic: its clinic rules and overrides, and the network
# rules it has not overridden. Pattern rules (one query each per report) also on their own.
MAX_ENABLED_RULES_PER_CLINIC = 200
MAX_ENABLED_PATTERN_RULES_PER_CLINIC = 20
# Condition evaluations above which the matching of one report runs in a worker thread,
# so the event loop keeps serving other requests meanwhile.
OFF_LOOP_EVALUATIONS = 20_000
