"""Incremental chain verification: its time after 10,000 new entries at two trail sizes.

    scripts/bench verify [--sizes 1000000,5000000] [--new 10000] [--runs 3] [--no-full]
    .venv/bin/python -m bench.verify ...            (the same, from the repository)

For each size it builds (or finds, built before) ``bench/data/audit-verify-<size>/``: the
embedded PostgreSQL's data folder holding ``size`` valid, hash-chained audit entries in
four clinics' chains, appended with COPY (``bench/fill_audit.py``), and a signed
checkpoint every 10 entries of each chain (what years of signing every 5 minutes leave;
incremental verification must not depend on their number); the free disk space
is checked first, and later runs reuse the folder (each run adds its own new entries to
it, so the trail grows by ``--new`` a run). Then, with ``safetyreport serve --workers 2``
on it (the background signing of checkpoints held off, so that the benchmark decides
where they are):

1. signs a checkpoint of every chain head (``safetyreport audit checkpoint``);
2. appends ``--new`` entries after it, spread over the four chains (COPY);
3. times ``GET /api/v1/audit/verify`` (incremental: each chain from that checkpoint)
   ``--runs`` times after one untimed call, wall clock as the client sees it; every
   size's service runs at once and the runs alternate between them, so that the
   machine's other load falls on each alike;
4. at the first size, times ``GET /api/v1/audit/verify?full=true`` once, for contrast.

It prints the median and the spread of each size and the ratio of the medians (the
goal, issue 17: within 20 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import BenchError, Service, log, machine_info
from bench.fill_audit import append_entries
from safetyreport.audit.signing import DEFAULT_KEY_FILE, Signer, checkpoint_body, signer_from_file

DATA_ROOT = Path(__file__).resolve().parent / "data"
CLINICS = ("V1", "V2", "V3", "V4")
AUDITOR = "bench-auditor"
PASSWORD = "bench-verify-auditor-secret"  # noqa: S105 (a throwaway benchmark user)
MARKER = "generated.json"
# A stored checkpoint every this many entries of a chain (100,000 at 1,000,000 entries).
CHECKPOINT_EVERY = 10
# The service's own signing of checkpoints, held off for the benchmark's run.
NO_BACKGROUND_CHECKPOINTS = {"SAFETYREPORT_CHECKPOINT_INTERVAL_SECONDS": str(7 * 24 * 3600)}


@dataclass
class Options:
    sizes: list[int]
    new: int
    runs: int
    full: bool
    root: Path


@dataclass
class Generated:
    entries: int
    load_seconds: float
    database_bytes: int
    built_at: str
    machine: dict[str, str]
    # Signed checkpoints stored with the entries (the years of them a trail holds).
    checkpoints: int = 0


@dataclass
class SizeResult:
    size: int
    entries_before: int
    checkpoints: int
    walked: int
    seconds: list[float]
    full_seconds: float | None = None
    full_walked: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="scripts/bench verify", description=__doc__)
    parser.add_argument(
        "--sizes", default="1000000,5000000", help="entries of each data set, comma-separated"
    )
    parser.add_argument("--new", type=int, default=10_000, help="entries after the checkpoint")
    parser.add_argument("--runs", type=int, default=3, help="timed verifications per size")
    parser.add_argument(
        "--no-full", action="store_true", help="skip the one full walk at the first size"
    )
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="where folders live")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < len(CLINICS) or args.runs < 1 or args.new < len(CLINICS):
        parser.error("sizes and --new of at least 4 entries, and at least one run")
    return Options(
        sizes=sizes, new=args.new, runs=args.runs, full=not args.no_full, root=args.data_root
    )


def needed_bytes(entries: int) -> int:
    """A generous estimate of a folder's size while it is built (table, index, WAL)."""
    return entries * 2_000 + 1_500_000_000


def check_disk(root: Path, entries: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    need = needed_bytes(entries)
    if free < need:
        raise BenchError(
            f"not enough free disk space in {root}: {free / 1e9:.1f} GB free, "
            f"{entries:,} audit entries need about {need / 1e9:.1f} GB; free some space, "
            "or pass smaller --sizes (or another --data-root)"
        )


def _signed_checkpoints(
    signer: Signer, chain: str, heads: list[asyncpg.Record]
) -> list[tuple[str, int, bytes, datetime, str, bytes]]:
    rows = []
    for h in heads:
        body = checkpoint_body(chain, h["seq"], h["hash"], h["recorded_at"], signer.key_id)
        signature = signer.sign_checkpoint(body)
        rows.append((chain, h["seq"], h["hash"], h["recorded_at"], signer.key_id, signature))
    return rows


async def _store_checkpoints(conn: asyncpg.Connection[Any], signer: Signer, chain: str) -> int:
    """Sign and store a checkpoint every CHECKPOINT_EVERY entries of ``chain``, as the
    service would have over the years (it signs a changed head every 5 minutes)."""
    heads = await conn.fetch(
        "SELECT seq, hash, recorded_at FROM audit_entries WHERE chain = $1 AND seq % $2 = 0 "
        "ORDER BY seq",
        chain,
        CHECKPOINT_EVERY,
    )
    rows = await asyncio.to_thread(_signed_checkpoints, signer, chain, heads)
    await conn.copy_records_to_table(
        "audit_checkpoints",
        records=rows,
        columns=["chain", "seq", "hash", "signed_at", "key_id", "signature"],
    )
    return len(rows)


async def _fill(owner_url: str, entries: int, signer: Signer) -> tuple[int, int]:
    """Append the entries, then store the checkpoints; the database's size and how many
    checkpoints."""
    conn = await asyncpg.connect(owner_url)
    try:
        await conn.execute("SET synchronous_commit = off")
        share = entries // len(CLINICS)
        stored = 0
        for i, clinic in enumerate(CLINICS):
            count = share + (entries - share * len(CLINICS) if i == 0 else 0)
            started = time.monotonic()
            await append_entries(conn, f"clinic:{clinic}", count)
            stored += await _store_checkpoints(conn, signer, f"clinic:{clinic}")
            log(f"clinic:{clinic}: {count:,} entries in {time.monotonic() - started:.0f} s")
        await conn.execute("VACUUM ANALYZE audit_entries, audit_checkpoints")
        size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
        return size, stored
    finally:
        await conn.close()


def build(root: Path, entries: int) -> tuple[Service, Generated]:
    """The folder's service, started; the entries appended first if the folder is new."""
    folder = root / f"audit-verify-{entries}"
    marker = folder / MARKER
    if marker.exists():
        generated = Generated(**json.loads(marker.read_text()))
        log(f"reusing {folder} (built {generated.built_at} in {generated.load_seconds:.0f} s)")
        service = Service(folder, env=NO_BACKGROUND_CHECKPOINTS)
        service.start(workers=2)
        return service, generated
    check_disk(root, entries)
    if folder.exists():
        log(f"removing the unfinished folder {folder}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    service = Service(folder, env=NO_BACKGROUND_CHECKPOINTS)
    service.start(workers=2)
    try:
        for clinic in CLINICS:
            service.run_cli("clinic", "add", clinic, "--name", f"Bench {clinic}")
        service.run_cli(
            "user",
            "add",
            AUDITOR,
            "--role",
            "auditor",
            "--all-clinics",
            "--password-stdin",
            stdin=PASSWORD + "\n",
        )
        log(f"appending {entries:,} audit entries in {folder}")
        started = time.monotonic()
        signer = signer_from_file(service.data_dir / DEFAULT_KEY_FILE)
        database_bytes, stored = asyncio.run(_fill(service.owner_url(), entries, signer))
        generated = Generated(
            entries=entries,
            checkpoints=stored,
            load_seconds=round(time.monotonic() - started, 1),
            database_bytes=database_bytes,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            machine=machine_info(),
        )
    except BaseException:
        service.stop()
        raise
    marker.write_text(json.dumps(asdict(generated), indent=2) + "\n")
    log(f"built in {generated.load_seconds:.0f} s ({database_bytes / 1e9:.2f} GB)")
    return service, generated


async def _append_new(owner_url: str, new: int) -> tuple[int, int]:
    conn = await asyncpg.connect(owner_url)
    try:
        share = new // len(CLINICS)
        for i, clinic in enumerate(CLINICS):
            count = share + (new - share * len(CLINICS) if i == 0 else 0)
            await append_entries(conn, f"clinic:{clinic}", count, batch=10_000)
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM audit_entries) AS entries, "
            "(SELECT count(*) FROM audit_checkpoints) AS checkpoints"
        )
        assert row is not None
        return row["entries"], row["checkpoints"]
    finally:
        await conn.close()


def _verify(service: Service, token: str, *, full: bool) -> tuple[float, dict[str, Any]]:
    url = f"{service.base_url}/api/v1/audit/verify" + ("?full=true" if full else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:  # noqa: S310
        body: dict[str, Any] = json.load(response)
    seconds = time.perf_counter() - started
    if not body["ok"]:
        raise BenchError(f"the trail did not verify: {json.dumps(body)[:2000]}")
    return seconds, body


@dataclass
class Prepared:
    service: Service
    size: int
    token: str
    entries_before: int
    checkpoints: int


def prepare(options: Options, size: int) -> Prepared:
    """The size's service, started, with a checkpoint signed and the new entries after it."""
    service, _generated = build(options.root, size)
    try:
        log("signing a checkpoint of every chain head")
        service.run_cli("audit", "checkpoint", "--output", str(service.workdir / "cp.json"))
        total, stored = asyncio.run(_append_new(service.owner_url(), options.new))
        log(f"{options.new:,} entries appended after it ({total:,} in all)")
        token = service.login(AUDITOR, PASSWORD)
        _verify(service, token, full=False)  # warm-up, untimed
    except BaseException:
        service.stop()
        raise
    return Prepared(
        service=service,
        size=size,
        token=token,
        entries_before=total - options.new,
        checkpoints=stored,
    )


def measure(options: Options) -> list[SizeResult]:
    """Every size's service at once; the timed runs alternate between them, so that the
    machine's other load falls on each alike."""
    prepared: list[Prepared] = []
    try:
        for size in options.sizes:
            prepared.append(prepare(options, size))
        results = [
            SizeResult(
                size=p.size,
                entries_before=p.entries_before,
                checkpoints=p.checkpoints,
                walked=0,
                seconds=[],
            )
            for p in prepared
        ]
        for run in range(options.runs):
            for p, result in zip(prepared, results, strict=True):
                took, body = _verify(p.service, p.token, full=False)
                if body["full"]:
                    raise BenchError("the verification walked from the first entry")
                result.walked = body["entries"]
                result.seconds.append(took)
                log(
                    f"run {run + 1}/{options.runs} at {p.entries_before:,}: {took:.3f} s, "
                    f"{result.walked:,} entries walked"
                )
        if options.full:
            first = prepared[0]
            took, body = _verify(first.service, first.token, full=True)
            results[0].full_seconds, results[0].full_walked = took, body["entries"]
            log(f"full walk: {took:.1f} s, {body['entries']:,} entries")
    finally:
        for p in prepared:
            p.service.stop()
    return results


def render(options: Options, results: list[SizeResult]) -> str:
    machine = machine_info()
    lines = [
        f"Incremental audit verification: {options.new:,} new entries after a signed "
        f"checkpoint, {options.runs} runs per size",
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory']}, "
        f"Python {machine['python']}, load now {machine['load_before']}",
        "",
        "| entries before | stored checkpoints | entries walked | median s | min s | max s "
        "| runs (s) |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        runs = ", ".join(f"{s:.3f}" for s in r.seconds)
        lines.append(
            f"| {r.entries_before:,} | {r.checkpoints:,} | {r.walked:,} | {r.median:.3f} | "
            f"{min(r.seconds):.3f} | {max(r.seconds):.3f} | {runs} |"
        )
    lines.append("")
    for r in results:
        if r.full_seconds is not None:
            lines.append(
                f"full walk (?full=true) at {r.entries_before:,}: {r.full_seconds:.2f} s, "
                f"{r.full_walked:,} entries"
            )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        ratio = large.median / small.median if small.median else 0.0
        verdict = "met" if abs(ratio - 1) <= 0.20 else "NOT met"
        lines.append(
            f"median at {large.entries_before:,} / median at {small.entries_before:,}: "
            f"{ratio:.2f} (goal: within 20 %: {verdict})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        results = measure(options)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(options, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
