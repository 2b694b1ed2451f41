"""The keys of new rows: UUIDv7 (RFC 9562), time-ordered.

A report, its alert and its notification are each a row of a table with years of rows
behind it, and a key in one or more of its indexes (the primary key, the audit trail's
object index, the links between them). A random key (UUIDv4) lands on a random leaf page
of each such index, so at year six every write reads and dirties pages from all over
indexes far larger than the server's shared buffers; a time-ordered key lands on the
latest pages, which are in memory (docs/performance.md, "Ingest at year six").

The key's first 48 bits are its creation time in milliseconds: it tells no more than the
row's own created_at, which every reader of the row sees. Keys made elsewhere (a tablet's
offline session, an Idempotency-Key) stay what their maker chose.
"""

from __future__ import annotations

import uuid

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    """A new row's key: unique, and later than every key this process made before it."""
    return uuid7()
