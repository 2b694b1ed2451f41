"""The audit trail: hash-chained, append-only, verified. Every other feature calls it."""

from safetyreport.audit.chain import (
    GENESIS_HASH,
    Actor,
    AuditEvent,
    append,
    append_for_each_clinic,
    append_to_clinics,
    chain_for,
    lock_chains,
)
from safetyreport.audit.verify import ChainReport, VerifyReport, verify_chains

__all__ = [
    "GENESIS_HASH",
    "Actor",
    "AuditEvent",
    "ChainReport",
    "VerifyReport",
    "append",
    "append_for_each_clinic",
    "append_to_clinics",
    "chain_for",
    "lock_chains",
    "verify_chains",
]
