#!/usr/bin/env python3
"""Verify a safetyreport audit export offline, with nothing but its public key.

    python3 offline.py EXPORT --public-key KEY.pem [--checkpoint FILE ...] [--json]

Needs only Python 3.11+ and the ``cryptography`` package, so an auditor can run it
without installing the service (``GET /api/v1/audit/verifier.py`` serves this file);
``safetyreport audit verify EXPORT --public-key KEY`` runs the same code. It checks:

- the manifest's Ed25519 signature, and that nothing follows the manifest;
- the body digest: the SHA-256 of everything before the manifest;
- every entry: its hash is the SHA-256 of its canonical content, and the content
  names the same chain, sequence number and previous hash as the entry;
- every link: within a chain, entries come in order and each entry's previous hash is
  the hash of the entry before it (where the export holds both), and entry 1 starts
  from the genesis hash;
- the per-chain ranges and counts the manifest states (so a dropped entry is named);
- signed checkpoints, when given: the checkpointed head is still in the chain and the
  export links from it to its end, so the chain only grew since.

An NDJSON export is one JSON object per entry line, then the manifest line
``{"manifest": {...}, "signature": "<base64>"}``. A CSV export is a zip holding
``audit-export.csv`` and ``manifest.json`` (the same manifest line).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

EXPORT_FORMAT = "safetyreport-audit-export/1"
CHECKPOINT_FORMAT = "safetyreport-audit-checkpoint/1"
# The action of the entry that records a restore from backup (audit/restores.py).
RESTORED_ACTION = "database.restored"
# The exit status when the export verifies but is behind a given checkpoint.
EXIT_BEHIND = 3
GENESIS_HEX = "00" * 32
MAX_GAPS_NAMED = 20
CONTENT_KEY = b',"content":'
CSV_MEMBER = "audit-export.csv"
MANIFEST_MEMBER = "manifest.json"
# Column order of the CSV export; the verifier reads columns by name.
CSV_COLUMNS = (
    "chain",
    "seq",
    "recorded_at",
    "actor",
    "actor_id",
    "actor_role",
    "action",
    "object_type",
    "object_id",
    "clinic",
    "client_addr",
    "details",
    "prev_hash",
    "hash",
    "content",
)


def canonical_json(value: Any) -> bytes:
    """The bytes a signature covers: sorted keys, no spaces, ASCII only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: the start of its SHA-256."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the public key is not an Ed25519 key")
    return key


def raw_content(line: bytes) -> str | None:
    """The exact text of an NDJSON entry's content: the line's last value, as it stands.

    An entry line is ``{"chain":...,"seq":...,"prev_hash":...,"hash":...,"content":C}``
    where C is the canonical content itself (not re-encoded), so its hash is the SHA-256
    of those bytes.
    """
    at = line.find(CONTENT_KEY)
    body = line.rstrip(b"\r\n")
    if at < 0 or not body.endswith(b"}"):
        return None
    try:
        return body[at + len(CONTENT_KEY) : -1].decode()
    except UnicodeDecodeError:
        return None


def restore_cell(cell: str) -> str:
    """Undo the CSV export's formula neutralisation of one cell.

    The export puts a ``'`` before any cell a spreadsheet would run as a formula and
    before any cell that already starts with ``'``; so one leading ``'`` is always added.
    """
    return cell[1:] if cell.startswith("'") else cell


def signature_ok(public_key: Ed25519PublicKey, document: Any, signature: Any) -> bool:
    """Whether ``signature`` (base64) signs ``canonical_json(document)`` with this key."""
    if not isinstance(signature, str):
        return False
    try:
        public_key.verify(base64.b64decode(signature, validate=True), canonical_json(document))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


@dataclass
class ChainSeen:
    """What the export holds of one chain."""

    first_seq: int
    last_seq: int
    entries: int
    last_hash: str
    # The first few holes in the sequence: (first missing, last missing).
    gaps: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Checkpoint:
    chain: str
    seq: int
    hash: str
    signed_at: str
    # Set while reading: where the export meets the checkpoint, and whether it
    # links without a gap from there to the chain's last exported entry.
    met: bool = False
    gap_after: int | None = None
    # Why the export's entry at or after the signed head does not match it, if it does not.
    mismatch: str | None = None


@dataclass
class Result:
    ok: bool = False
    entries: int = 0
    problems: list[str] = field(default_factory=list)
    chains: dict[str, ChainSeen] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    checkpoints: int = 0
    # Checkpoints the chain is behind: a recorded restore dropped the entries they signed.
    behind: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Verifier:
    """Reads entries one at a time, keeping only a little state per chain."""

    def __init__(self, public_key: Ed25519PublicKey, checkpoints: list[Checkpoint]) -> None:
        self.public_key = public_key
        self.result = Result(checkpoints=len(checkpoints))
        self.body = hashlib.sha256()
        self.checkpoints: dict[str, list[Checkpoint]] = {}
        for cp in checkpoints:  # copies: reading an export marks where it meets each one
            self.checkpoints.setdefault(cp.chain, []).append(replace(cp, met=False, gap_after=None))
        self._last: tuple[str, int] | None = None
        # Restores recorded in the export, by chain: (the chain's head kept, target time).
        self.restores: dict[str, list[tuple[int, str]]] = {}

    def problem(self, message: str) -> None:
        self.result.problems.append(message)

    # -- entries -------------------------------------------------------------------

    def entry(self, where: str, entry: Any, parsed: Any = None) -> None:
        """Check one entry: its fields, its hash, its order and its link.

        ``entry["content"]`` is the content's text; ``parsed`` is that text already
        parsed, when the reader has it.
        """
        fields = _entry_fields(entry)
        if isinstance(fields, str):
            self.problem(f"{where}: {fields}")
            return
        chain, seq, prev_hash, hash_hex, content = fields
        name = f"entry {chain}#{seq} ({where})"
        self.result.entries += 1
        if hashlib.sha256(content.encode()).hexdigest() != hash_hex:
            self.problem(f"{name} was altered: its content does not match its hash")
        if not isinstance(parsed, dict):
            parsed = _parse_object(content)
        if parsed is None:
            self.problem(f"{name}: its content is not a JSON object")
        else:
            for key, value in (("chain", chain), ("seq", seq), ("prev_hash", prev_hash)):
                if parsed.get(key) != value:
                    self.problem(f"{name}: its {key} differs from the one in its content")
            self.columns_match(name, entry, parsed)
            self.note_restore(chain, parsed)
        self.order_and_link(name, chain, seq, prev_hash, hash_hex)

    def note_restore(self, chain: str, content: dict[str, Any]) -> None:
        """A recorded restore (``database.restored``): the chain's head it kept, and when."""
        details = content.get("details")
        if content.get("action") != RESTORED_ACTION or not isinstance(details, dict):
            return
        head = details.get("head", (details.get("heads") or {}).get(chain, 0))
        target = details.get("target_time")
        if isinstance(head, int) and isinstance(target, str):
            self.restores.setdefault(chain, []).append((head, target))

    def dropped_by_restore(self, cp: Checkpoint) -> tuple[int, str] | None:
        """The recorded restore (head kept, target time) that dropped ``cp``'s head, if any."""
        for head, target in self.restores.get(cp.chain, ()):
            if cp.seq > head and _later(cp.signed_at, target):
                return head, target
        return None

    def columns_match(self, name: str, entry: dict[str, Any], content: dict[str, Any]) -> None:
        """CSV rows show the content's fields as columns; each must say the same."""
        for column, value in entry.items():
            if column in ("chain", "seq", "prev_hash", "hash", "content"):
                continue
            if column not in content or not _same_cell(value, content[column]):
                self.problem(f"{name}: column {column} differs from the entry's content")

    def order_and_link(self, name: str, chain: str, seq: int, prev: str, hash_hex: str) -> None:
        if self._last is not None and (chain, seq) <= self._last:
            last_chain, last_seq = self._last
            self.problem(f"{name} is out of order: it follows entry {last_chain}#{last_seq}")
        self._last = (chain, seq)
        seen = self.result.chains.get(chain)
        if seen is None:
            seen = self.result.chains[chain] = ChainSeen(seq, seq, 0, hash_hex)
        elif seq == seen.last_seq + 1 and prev != seen.last_hash:
            self.problem(
                f"{name} does not link to entry {chain}#{seen.last_seq}: its previous hash "
                "differs from that entry's hash"
            )
        elif seq > seen.last_seq + 1 and len(seen.gaps) < MAX_GAPS_NAMED:
            seen.gaps.append((seen.last_seq + 1, seq - 1))
        if seq == 1 and prev != GENESIS_HEX:
            self.problem(f"{name} is the first of its chain but does not start from genesis")
        self.meet_checkpoints(name, chain, seq, prev, hash_hex, seen)
        if seen.entries:
            seen.last_seq = max(seen.last_seq, seq)
        seen.entries += 1
        seen.last_hash = hash_hex

    def meet_checkpoints(
        self, name: str, chain: str, seq: int, prev: str, hash_hex: str, seen: ChainSeen
    ) -> None:
        for cp in self.checkpoints.get(chain, ()):
            if cp.met and seen.entries and seq != seen.last_seq + 1 and cp.gap_after is None:
                cp.gap_after = seen.last_seq
            # Judged at the end, when every restore the export records is known.
            if seq == cp.seq:
                cp.met = True
                if hash_hex != cp.hash:
                    cp.mismatch = (
                        f"{name} differs from the checkpoint signed at {cp.signed_at}: "
                        "the chain was rewritten since"
                    )
            elif seq == cp.seq + 1 and not cp.met:
                cp.met = True
                if prev != cp.hash:
                    cp.mismatch = (
                        f"{name} does not link to the head signed at {cp.signed_at} "
                        f"(entry {chain}#{cp.seq}): the chain was rewritten since"
                    )

    # -- manifest ------------------------------------------------------------------

    def manifest(self, where: str, line: Any) -> None:
        """Check the signed manifest against what was read."""
        if not isinstance(line, dict) or not isinstance(line.get("manifest"), dict):
            self.problem(f"{where}: the manifest is missing or not an object")
            return
        manifest: dict[str, Any] = line["manifest"]
        self.result.manifest = manifest
        if not signature_ok(self.public_key, manifest, line.get("signature")):
            self.problem(
                "manifest.signature does not verify with this public key: the manifest "
                "was edited, or signed by another key"
            )
        if manifest.get("key_id") != key_id(self.public_key):
            self.problem("manifest.key_id names another key than the one given")
        if manifest.get("format") != EXPORT_FORMAT:
            self.problem(f"manifest.format is not {EXPORT_FORMAT}")
        if manifest.get("body_sha256") != self.body.hexdigest():
            self.problem(
                "manifest.body_sha256 does not match the export's body: entries were "
                "changed, removed, added or reordered"
            )
        if manifest.get("entries") != self.result.entries:
            self.problem(
                f"manifest.entries says {manifest.get('entries')}, the export holds "
                f"{self.result.entries}"
            )
        self.chain_ranges(manifest.get("chains"))

    def chain_ranges(self, stated: Any) -> None:
        if not isinstance(stated, dict):
            self.problem("manifest.chains is missing or not an object")
            return
        for chain in sorted(set(stated) | set(self.result.chains)):
            self.chain_range(chain, stated.get(chain), self.result.chains.get(chain))

    def chain_range(self, chain: str, stated: Any, seen: ChainSeen | None) -> None:
        label = f"manifest.chains[{chain}]"
        if not isinstance(stated, dict):
            self.problem(f"{label} is missing, but the export holds entries of {chain}")
            return
        if seen is None:
            self.problem(f"{label} states entries, but the export holds none of {chain}")
            return
        for key, actual in (
            ("first_seq", seen.first_seq),
            ("last_seq", seen.last_seq),
            ("entries", seen.entries),
        ):
            if stated.get(key) != actual:
                self.problem(f"{label}.{key} says {stated.get(key)}, the export holds {actual}")
        first, last = stated.get("first_seq"), stated.get("last_seq")
        if not isinstance(first, int) or not isinstance(last, int):
            return
        if stated.get("entries") == last - first + 1 > seen.entries:
            # The manifest promises every entry of the range, so each hole is a removal.
            for start, end in seen.gaps:
                missing = f"#{start}" if start == end else f"#{start} to #{end}"
                self.problem(f"entry {chain}{missing} is missing from the export")
            self.problem(
                f"{label}: the export should hold every entry from {chain}#{first} to "
                f"#{last}, but {last - first + 1 - seen.entries} are missing"
            )

    def finish(self) -> Result:
        for chain, cps in sorted(self.checkpoints.items()):
            for cp in cps:
                seen = self.result.chains.get(chain)
                restore = self.dropped_by_restore(cp)
                if restore is not None:
                    head, target = restore
                    self.result.behind.append(
                        f"checkpoint {chain}#{cp.seq} (signed at {cp.signed_at}): the chain "
                        f"is behind this signed head: the database was restored to {target}, "
                        f"which kept {chain} up to #{head} (recorded in the export); the "
                        "entries after it that this checkpoint covers are not in the database"
                    )
                elif cp.mismatch is not None:
                    self.problem(cp.mismatch)
                elif not cp.met or seen is None:
                    self.problem(
                        f"checkpoint {chain}#{cp.seq} (signed at {cp.signed_at}) is not in "
                        "this export: export a range that includes it"
                    )
                elif cp.gap_after is not None:
                    self.problem(
                        f"checkpoint {chain}#{cp.seq}: the export skips entries after "
                        f"{chain}#{cp.gap_after}, so it cannot show the chain only grew"
                    )
        if self.result.manifest is None and not any("manifest" in p for p in self.result.problems):
            self.problem("the export has no manifest: its last line must be the manifest")
        self.result.ok = not self.result.problems and not self.result.behind
        return self.result


def _later(first: str, second: str) -> bool:
    """Whether time ``first`` is after ``second`` (ISO 8601 with offsets); False if unreadable."""
    try:
        return datetime.fromisoformat(first) > datetime.fromisoformat(second)
    except (TypeError, ValueError):
        return False


def _entry_fields(entry: Any) -> tuple[str, int, str, str, str] | str:
    """The chain fields of an entry, or why they cannot be read."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    chain, seq = entry.get("chain"), entry.get("seq")
    prev_hash, hash_hex, content = entry.get("prev_hash"), entry.get("hash"), entry.get("content")
    if isinstance(seq, str) and seq.isdigit():
        seq = int(seq)  # CSV cells are text
    if not isinstance(chain, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return "the entry has no chain or sequence number"
    if not isinstance(prev_hash, str) or not isinstance(hash_hex, str):
        return f"entry {chain}#{seq} has no hash or previous hash"
    if not isinstance(content, str):
        return f"entry {chain}#{seq} carries no content to recompute its hash from"
    return chain, seq, prev_hash, hash_hex, content


def _parse_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _same_cell(cell: Any, value: Any) -> bool:
    """Whether a CSV cell shows ``value`` (empty cells are nulls, details are JSON)."""
    if value is None:
        return bool(cell == "")
    if isinstance(value, dict | list):
        return bool(_parse_json(cell) == value)
    return bool(cell == str(value))


def _parse_json(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


# -- reading the two formats -------------------------------------------------------------


def _verify_ndjson(lines: Iterable[bytes], verifier: _Verifier) -> None:
    manifest_line: int | None = None
    for number, raw in enumerate(lines, start=1):
        where = f"line {number}"
        if manifest_line is not None:
            verifier.problem(
                f"{where} follows the manifest (line {manifest_line}): nothing after the "
                "manifest is covered by its signature"
            )
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            verifier.body.update(raw)
            verifier.problem(f"{where} is not valid JSON")
            continue
        if isinstance(value, dict) and "manifest" in value:
            manifest_line = number
            verifier.manifest(where, value)
            continue
        verifier.body.update(raw)
        if isinstance(value, dict):
            parsed, value["content"] = value.get("content"), raw_content(raw)
            verifier.entry(where, value, parsed)
        else:
            verifier.entry(where, value)


class _DigestingReader(io.RawIOBase):
    """Feeds every byte read from ``source`` into ``digest``."""

    def __init__(self, source: IO[bytes], digest: Any) -> None:
        self.source = source
        self.digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        self.digest.update(data)
        buffer[: len(data)] = data
        return len(data)


def _verify_csv_zip(archive: zipfile.ZipFile, verifier: _Verifier) -> None:
    names = set(archive.namelist())
    if CSV_MEMBER not in names or MANIFEST_MEMBER not in names:
        verifier.problem(f"the zip must hold {CSV_MEMBER} and {MANIFEST_MEMBER}")
        return
    if extra := sorted(names - {CSV_MEMBER, MANIFEST_MEMBER}):
        verifier.problem(f"the zip holds files no signature covers: {', '.join(extra)}")
    with archive.open(CSV_MEMBER) as member:
        raw = io.BufferedReader(_DigestingReader(member, verifier.body))
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        reader = csv.DictReader(text)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            verifier.problem(f"{CSV_MEMBER}: the header is not {','.join(CSV_COLUMNS)}")
        for row in reader:
            entry = {column: restore_cell(cell or "") for column, cell in row.items() if column}
            verifier.entry(f"{CSV_MEMBER} row {reader.line_num}", entry)
        text.read()  # the digest covers the whole member
    try:
        manifest = json.loads(archive.read(MANIFEST_MEMBER))
    except ValueError:
        verifier.problem(f"{MANIFEST_MEMBER} is not valid JSON")
        return
    verifier.manifest(MANIFEST_MEMBER, manifest)


def verify_export(
    export: IO[bytes], public_key: Ed25519PublicKey, checkpoints: Iterable[Checkpoint] = ()
) -> Result:
    """Verify an export (NDJSON, or the CSV zip) from a seekable binary file object."""
    verifier = _Verifier(public_key, list(checkpoints))
    export.seek(0)  # a file just written (a spooled upload) stands at its end
    is_zip = export.read(4) == b"PK\x03\x04"
    export.seek(0)
    if is_zip:
        try:
            with zipfile.ZipFile(export) as archive:
                _verify_csv_zip(archive, verifier)
        except zipfile.BadZipFile as exc:
            verifier.problem(f"the export is not a readable zip: {exc}")
    else:
        _verify_ndjson(export, verifier)
    return verifier.finish()


def load_checkpoints(data: bytes, public_key: Ed25519PublicKey) -> list[Checkpoint]:
    """Signed checkpoints from a file (one document or a list); raises on a bad one."""
    documents = json.loads(data)
    if isinstance(documents, dict):
        documents = [documents]
    if not isinstance(documents, list):
        raise ValueError("a checkpoint file holds one signed checkpoint or a list of them")
    checkpoints = []
    for number, document in enumerate(documents, start=1):
        body = document.get("checkpoint") if isinstance(document, dict) else None
        if not isinstance(body, dict) or body.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {number} is not a {CHECKPOINT_FORMAT} document")
        if not signature_ok(public_key, body, document.get("signature")):
            raise ValueError(
                f"checkpoint {number} ({body.get('chain')}#{body.get('seq')}): the signature "
                "does not verify with this public key"
            )
        checkpoints.append(
            Checkpoint(
                chain=str(body["chain"]),
                seq=int(body["seq"]),
                hash=str(body["hash"]),
                signed_at=str(body["signed_at"]),
            )
        )
    return checkpoints


def load_checkpoint_files(files: list[str], public_key: Ed25519PublicKey) -> list[Checkpoint]:
    return [cp for file in files for cp in load_checkpoints(Path(file).read_bytes(), public_key)]


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Verify a safetyreport audit export offline.")
    add_arguments(parser, export_required=True)
    return parser


def add_arguments(parser: argparse.ArgumentParser, *, export_required: bool) -> None:
    parser.add_argument(
        "export", nargs=None if export_required else "?", help="NDJSON export or CSV zip"
    )
    parser.add_argument("--public-key", help="the service's public key (PEM)")
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="a signed checkpoint file; the export must show the chain only grew since",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(
    export: str, public_key_file: str | None, checkpoint_files: list[str], *, as_json: bool
) -> int:
    """Verify ``export``; print the result; return the exit status: 0 verified, 1 not,
    3 (EXIT_BEHIND) verified but behind a given checkpoint (a recorded restore)."""
    if not public_key_file:
        print("error: give the service's public key with --public-key", file=sys.stderr)
        return 2
    try:
        public_key = load_public_key(Path(public_key_file).read_bytes())
        checkpoints = load_checkpoint_files(checkpoint_files, public_key)
        with open(export, "rb") as stream:
            result = verify_export(stream, public_key, checkpoints)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        for problem in result.problems:
            print(f"FAIL  {problem}")
        for finding in result.behind:
            print(f"BEHIND  {finding}")
        for chain, seen in sorted(result.chains.items()):
            print(f"      {chain}: entries {seen.first_seq}-{seen.last_seq} ({seen.entries})")
        verdict = (
            "verified"
            if result.ok
            else "BEHIND A SIGNED HEAD"
            if not result.problems
            else "NOT VERIFIED"
        )
        print(
            f"{verdict}: {result.entries} entries in {len(result.chains)} chains, "
            f"{result.checkpoints} checkpoints, key {key_id(public_key)}"
        )
    if result.ok:
        return 0
    return 1 if result.problems else EXIT_BEHIND


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.export, args.public_key, args.checkpoint, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
