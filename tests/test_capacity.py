"""No client can freeze the service by taking work it never finishes (issue 10: 1, 12, 18).

Over a real ``safetyreport serve``: exports opened on raw sockets with a small receive
buffer and never read, a database lock that keeps the only pooled connection busy, a
verification of a long chain, uploads held half-sent. Deadlines here are generous
bounds that prove nothing hangs, never measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fill_audit import append_entries
from safetyreport.db.pool import connect
from tests.helpers.processes import ServeProcess, serving
from tests.helpers.reports import bp_report, seed_copies
from tests.helpers.service import UserSpec, login, seed
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.end_to_end, pytest.mark.timeout(240)]

ANSWER_WITHIN = 10.0  # seconds: a bound on "still answers", not a measurement
REPORT_EXPORT = "/api/v1/reports/export?format=ndjson"
AUDIT_EXPORT = "/api/v1/audit/export"


def stalled_get(port: int, path: str, headers: dict[str, str]) -> tuple[socket.socket, bytes]:
    """Send a GET on a socket with a tiny receive buffer; read the head only, then stall.

    Returns the socket (to close later) and the response head.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"the server closed the connection after {head!r}"
        head += byte
    return sock, head


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header_of(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@contextlib.contextmanager
def closing_all() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def open_stalled(
    service: ServeProcess, path: str, headers: dict[str, str], sockets: list[socket.socket]
) -> bytes:
    sock, head = await asyncio.to_thread(stalled_get, service.port, path, headers)
    sockets.append(sock)
    return head


async def still_answers(service: ServeProcess, headers: dict[str, str]) -> None:
    """Another clinic's user and the health check are answered (within a generous bound)."""
    async with httpx.AsyncClient(base_url=service.base_url, timeout=ANSWER_WITHIN) as http:
        me = await http.get("/api/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        health = await http.get("/health")
        assert health.status_code == 200, health.text


NURSES = [UserSpec(f"nurse{i}", "nurse", ("A",)) for i in range(1, 4)]
AUDITORS = [UserSpec(f"auditor{i}", "auditor", all_clinics=True) for i in range(1, 4)]
OTHER = UserSpec("olga", "nurse", ("B",))


async def many_reports(database_url: str, service: ServeProcess, count: int) -> None:
    """``count`` reports in clinic A, made from one submitted through the API."""
    nurse = await login(service.base_url, "nurse1")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as http:
        response = await http.post(
            "/api/v1/reports",
            json=bp_report("A"),
            headers={**nurse, "Idempotency-Key": str(uuid.uuid4())},
        )
    assert response.status_code == 201, response.text
    db = await connect(database_url)
    try:
        await seed_copies(db, response.json()["id"], count - 1)
    finally:
        await db.close()


@pytest.mark.parametrize(
    ("path", "users"), [(REPORT_EXPORT, NURSES), (AUDIT_EXPORT, AUDITORS)], ids=["reports", "audit"]
)
async def test_stalled_exports_cannot_freeze_the_service(
    database_url: str, tmp_path: Path, path: str, users: list[UserSpec]
) -> None:
    """Ten exports never read: two per user and four in all run, the rest are 429.

    Before the fix the ten held all ten pooled connections and another clinic's
    ``GET /api/v1/me`` hung while ``/health`` answered 503.
    """
    await seed(database_url, {"A": "Clinic A", "B": "Clinic B"}, [*users, OTHER])
    async with serving(database_url, tmp_path) as service:
        if path == REPORT_EXPORT:
            await many_reports(database_url, service, 20_000)
        else:
            db = await connect(database_url)
            try:
                await append_entries(db, "clinic:A", 40_000)
            finally:
                await db.close()
        tokens = [await login(service.base_url, user.username) for user in users]
        other = await login(service.base_url, OTHER.username)

        with closing_all() as sockets:
            first, second, third = tokens
            heads = [await open_stalled(service, path, first, sockets) for _ in range(3)]
            # Two run for one user; the third is refused, saying when to retry.
            assert [status_of(h) for h in heads] == [200, 200, 429]
            assert int(header_of(heads[2], "Retry-After") or "0") > 0
            heads = [await open_stalled(service, path, second, sockets) for _ in range(2)]
            assert [status_of(h) for h in heads] == [200, 200]
            # Four run in all: a third user is refused too.
            heads = [await open_stalled(service, path, third, sockets) for _ in range(5)]
            assert {status_of(h) for h in heads} == {429}
            assert all(header_of(h, "Retry-After") for h in heads)

            await still_answers(service, other)


async def test_a_stalled_export_ends_at_its_send_deadline(
    database_url: str, tmp_path: Path
) -> None:
    """A client that takes nothing for the deadline loses its export, recorded incomplete."""
    await seed(database_url, {"A": "Clinic A", "B": "Clinic B"}, [*NURSES, OTHER])
    env = {"SAFETYREPORT_EXPORT_SEND_TIMEOUT_SECONDS": "2", "SAFETYREPORT_EXPORTS_PER_USER": "1"}
    async with serving(database_url, tmp_path, env=env) as service:
        await many_reports(database_url, service, 20_000)
        nurse = await login(service.base_url, "nurse1")
        db = await connect(database_url)
        try:
            with closing_all() as sockets:
                head = await open_stalled(service, REPORT_EXPORT, nurse, sockets)
                assert status_of(head) == 200

                async def ended() -> bool:
                    return bool(
                        await db.fetchval(
                            "SELECT count(*) FROM audit_entries WHERE action = 'report.exported'"
                        )
                    )

                await eventually(ended, "the stalled export's closing entry")
                details = await db.fetchval(
                    "SELECT details FROM audit_entries WHERE action = 'report.exported'"
                )
                assert details["completed"] is False
                assert 0 < details["count"] < 20_000
                # Its slot is free again (one per user here): the next export runs to the end.
                async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as http:
                    response = await http.get(REPORT_EXPORT, headers=nurse)
                assert response.status_code == 200, response.text
                assert len(response.content.splitlines()) == 20_000
        finally:
            await db.close()


async def test_a_request_that_cannot_get_a_connection_is_503_not_a_hang(
    database_url: str, tmp_path: Path
) -> None:
    """A pool of one, held by a request stuck behind a lock: the next one fails fast."""
    await seed(database_url, {"A": "Clinic A"}, [NURSES[0]])
    env = {"SAFETYREPORT_POOL_MAX_SIZE": "1", "SAFETYREPORT_POOL_ACQUIRE_TIMEOUT_SECONDS": "1"}
    async with serving(database_url, tmp_path, env=env) as service:
        nurse = await login(service.base_url, "nurse1")
        db = await connect(database_url)
        try:
            async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as http:
                async with db.transaction():
                    await db.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                    stuck = asyncio.create_task(http.get("/api/v1/me", headers=nurse))

                    async def waiting_on_the_lock() -> bool:
                        return bool(
                            await db.fetchval(
                                "SELECT count(*) FROM pg_stat_activity"
                                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                            )
                        )

                    await eventually(waiting_on_the_lock, "a request waiting on the lock")
                    response = await asyncio.wait_for(
                        http.get("/api/v1/me", headers=nurse), ANSWER_WITHIN
                    )
                    assert response.status_code == 503, response.text
                    assert int(response.headers["retry-after"]) > 0
                    assert response.headers["content-type"].startswith("application/problem+json")
                # The lock is gone: the stuck request is answered after all.
                assert (await asyncio.wait_for(stuck, ANSWER_WITHIN)).status_code == 200
        finally:
            await db.close()


async def test_verifying_a_long_chain_leaves_the_service_answering(
    database_url: str, tmp_path: Path
) -> None:
    """The hashing runs off the event loop, and one verification at a time."""
    await seed(database_url, {"A": "Clinic A", "B": "Clinic B"}, [AUDITORS[0], OTHER])
    db = await connect(database_url)
    try:
        await append_entries(db, "clinic:A", 300_000)
        async with serving(database_url, tmp_path) as service:
            auditor = await login(service.base_url, "auditor1")
            other = await login(service.base_url, OTHER.username)
            async with httpx.AsyncClient(base_url=service.base_url, timeout=120) as http:
                # The whole walk (full=true): the service may have signed the chain's head
                # at its start, and an incremental walk would then have nothing to do.
                verifying = asyncio.create_task(
                    http.get("/api/v1/audit/verify", params={"full": "true"}, headers=auditor)
                )

                async def hashing() -> bool:
                    return bool(
                        await db.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                            " current_database() AND query LIKE '%FROM audit_entries WHERE chain"
                            " = $1 AND seq > $2 AND seq <= $3 ORDER BY seq%'"
                            " AND query NOT LIKE '%pg_stat_activity%'"
                        )
                    )

                await eventually(hashing, "the verification to start")
                second = await http.get(
                    "/api/v1/audit/verify", params={"full": "true"}, headers=auditor
                )
                await still_answers(service, other)
                assert not verifying.done(), "the chain verified too fast to show anything"
                # One at a time: the second one is refused while the first runs.
                assert second.status_code == 429, second.text
                assert int(second.headers["retry-after"]) > 0
                report = await verifying
            assert report.status_code == 200, report.text
            assert report.json()["ok"] is True
            assert report.json()["full"] is True
            assert report.json()["entries"] >= 300_000
    finally:
        await db.close()


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def half_sent_upload(port: int, headers: dict[str, str], body: bytes) -> socket.socket:
    """POST an upload to the verifier, sending only the first half of its body."""
    sock = socket.socket()
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    lines = [
        "POST /api/v1/audit/export/verify HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Length: {len(body)}",
        "Content-Type: application/x-ndjson",
        *[f"{name}: {value}" for name, value in headers.items()],
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body[: len(body) // 2])
    return sock


async def test_uploads_are_verified_as_a_stream_a_few_at_a_time(
    database_url: str, tmp_path: Path
) -> None:
    await seed(database_url, {"A": "Clinic A"}, [AUDITORS[0]])
    db = await connect(database_url)
    try:
        await append_entries(db, "clinic:A", 60_000)
    finally:
        await db.close()
    env = {"SAFETYREPORT_UPLOAD_VERIFICATIONS": "1"}
    async with serving(database_url, tmp_path, env=env) as service:
        auditor = await login(service.base_url, "auditor1")
        async with httpx.AsyncClient(base_url=service.base_url, timeout=120) as http:
            export = (await http.get(AUDIT_EXPORT, headers=auditor)).content
            assert len(export) > 20 * 1024 * 1024

            # One verification at a time here: while an upload is half sent, another is 429.
            held: list[socket.socket] = []

            async def refused() -> bool:
                if not held:
                    upload = export[:4096]
                    held.append(
                        await asyncio.to_thread(half_sent_upload, service.port, auditor, upload)
                    )
                    await asyncio.sleep(0.5)  # a head start; a lost race is retried below
                response = await http.post(
                    "/api/v1/audit/export/verify", content=b"{}\n", headers=auditor
                )
                if response.status_code == 429:
                    assert int(response.headers["retry-after"]) > 0
                    return True
                # This one got the slot before the held upload did: hold a fresh one.
                held.pop().close()
                return False

            try:
                await eventually(refused, "an upload refused while another is verified")
            finally:
                for sock in held:
                    sock.close()

            async def slot_free() -> bool:
                response = await http.post(
                    "/api/v1/audit/export/verify", content=b"{}\n", headers=auditor
                )
                return response.status_code == 200

            await eventually(slot_free, "the held upload's slot to be free")

            # A large upload is verified whole, without the process holding all of it.
            assert service.proc is not None
            before = _rss_peak_kib(service.proc.pid)
            response = await http.post(
                "/api/v1/audit/export/verify", content=export, headers=auditor
            )
            assert response.status_code == 200, response.text
            result: dict[str, Any] = response.json()
            assert result["ok"] is True, result["problems"]
            assert result["entries"] == len(export.splitlines()) - 1  # all but the manifest
            grown_kib = _rss_peak_kib(service.proc.pid) - before
            assert grown_kib * 1024 < len(export) // 2, (grown_kib, len(export))
