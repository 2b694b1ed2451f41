"""Creating, reading, listing and amending reports, and the audit entry each one writes."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from tests.helpers.reports import (
    REPORTS,
    Stored,
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
    misuse_report,
    post_report,
    send_concurrently,
    stored,
)
from tests.helpers.world import World

UTC_SUFFIX = re.compile(r"(Z|\+00:00)$")


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


def parse_time(value: str) -> datetime:
    """An ISO time that must carry an explicit UTC offset."""
    assert UTC_SUFFIX.search(value), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def at(hour: int, minute: int = 0) -> str:
    return datetime(2026, 1, 15, hour, minute, tzinfo=UTC).isoformat()


async def list_reports(
    client: AsyncTestClient[Any], headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    response = await client.get(REPORTS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    assert set(page) == {"items", "next_cursor"}
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


async def version_rows(db: asyncpg.Connection[Any], report_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT version, body, hypertension_reading_grade, reason FROM report_versions"
        " WHERE report_id = $1::uuid ORDER BY version",
        report_id,
    )


# --- creating ---------------------------------------------------------------------


async def test_create_answers_the_stored_report(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    sent = bp_report(occurred_at="2026-01-15T10:30:00+01:00", pulse=88)
    response = await post_report(client, nurse, sent)
    assert response.status_code == 201, response.text
    view = response.json()
    assert uuid.UUID(view["id"]).version == 7  # time-ordered (safetyreport.ids)
    assert view["version"] == 1
    assert view["kind"] == "blood_pressure"
    assert view["clinic"] == "C1"
    assert view["patient_ref"] == "PT-001"
    assert view["created_by"] == "nina"
    assert view["serious"] is False
    assert view["hypertension_reading_grade"] == 2
    for name, value in sent.items():
        if name != "occurred_at":
            assert view["body"][name] == value, name
    utc = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    assert parse_time(view["occurred_at"]) == utc
    assert parse_time(view["body"]["occurred_at"]) == utc
    parse_time(view["created_at"])
    parse_time(view["updated_at"])


async def test_create_stores_version_1(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, dissociation_report(cadss_total=12))
    row = await db.fetchrow("SELECT * FROM reports WHERE id = $1::uuid", view["id"])
    assert row is not None
    assert row["kind"] == "dissociation"
    assert row["current_version"] == 1
    assert row["occurred_at"] == datetime(2026, 1, 15, 11, 0, tzinfo=UTC)
    [version] = await version_rows(db, view["id"])
    assert version["version"] == 1
    assert version["reason"] is None
    assert version["body"] == view["body"]
    assert version["body"]["cadss_total"] == 12


async def test_ids_are_time_ordered_and_not_guessable(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    first = await create_report(client, nurse, bp_report())
    second = await create_report(client, nurse, bp_report())
    ids = [uuid.UUID(first["id"]), uuid.UUID(second["id"])]
    # UUIDv7 (safetyreport.ids): the later report's key is the larger, and its last 62
    # bits are random (RFC 9562's rand_b), so one key tells nothing of the next.
    assert {i.version for i in ids} == {7}
    assert ids[0] < ids[1]
    random_bits = [i.int & ((1 << 62) - 1) for i in ids]
    assert random_bits[0] != random_bits[1]


async def test_any_seriousness_makes_a_report_serious(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, misuse_report(seriousness=["hospitalization"]))
    assert view["serious"] is True


async def test_a_safety_officer_may_report(world: World) -> None:
    await world.clinic("C1")
    await world.user("sam", "safety_officer", ["C1"])
    headers = await world.login("sam")
    view = await create_report(world.client, headers, bp_report())
    assert view["created_by"] == "sam"


# --- reading ----------------------------------------------------------------------


async def test_read_shows_the_current_version_and_history(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report(systolic=165, diastolic=85))
    response = await amend(client, nurse, created["id"], {"reason": "re-measured", "systolic": 148})
    assert response.status_code == 201, response.text

    read = await client.get(f"{REPORTS}/{created['id']}", headers=nurse)
    assert read.status_code == 200, read.text
    view = read.json()
    assert view["version"] == 2
    assert view["body"]["systolic"] == 148
    assert view["hypertension_reading_grade"] == 2
    first, second = view["history"]
    assert (first["version"], first["reason"], first["hypertension_reading_grade"]) == (1, None, 3)
    assert first["body"] == created["body"]
    assert (second["version"], second["reason"], second["hypertension_reading_grade"]) == (
        2,
        "re-measured",
        2,
    )
    assert second["body"] == view["body"]
    assert {first["created_by"], second["created_by"]} == {"nina"}
    parse_time(first["created_at"])


async def test_read_of_an_unknown_id_is_404(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    response = await client.get(f"{REPORTS}/{uuid.uuid4()}", headers=nurse)
    assert response.status_code == 404


# --- listing ----------------------------------------------------------------------


async def test_list_is_newest_first(client: AsyncTestClient[Any], nurse: dict[str, str]) -> None:
    middle = await create_report(client, nurse, bp_report(occurred_at=at(9)))
    newest = await create_report(client, nurse, dissociation_report(occurred_at=at(11)))
    oldest = await create_report(client, nurse, misuse_report(occurred_at=at(8)))
    page = await list_reports(client, nurse)
    assert ids(page) == [newest["id"], middle["id"], oldest["id"]]
    assert page["next_cursor"] is None
    item = page["items"][0]
    assert "history" not in item
    assert item["body"] == newest["body"]
    parse_time(item["occurred_at"])


async def test_list_filters(world: World) -> None:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("nina", "nurse", ["C1", "C2"])
    headers = await world.login("nina")
    client = world.client
    bp = await create_report(client, headers, bp_report(occurred_at=at(8)))
    dis = await create_report(client, headers, dissociation_report(occurred_at=at(9)))
    mis = await create_report(client, headers, misuse_report(occurred_at=at(10)))
    other = await create_report(
        client, headers, bp_report("C2", occurred_at=at(11), patient_ref="PT-009")
    )

    assert ids(await list_reports(client, headers)) == [
        other["id"],
        mis["id"],
        dis["id"],
        bp["id"],
    ]
    assert ids(await list_reports(client, headers, kind="blood_pressure")) == [
        other["id"],
        bp["id"],
    ]
    assert ids(await list_reports(client, headers, clinic="C2")) == [other["id"]]
    assert ids(await list_reports(client, headers, clinic="C1", kind="blood_pressure")) == [
        bp["id"]
    ]
    assert ids(await list_reports(client, headers, patient_ref="PT-002")) == [dis["id"]]
    # since is inclusive, until exclusive; offsets are honoured.
    assert ids(await list_reports(client, headers, since=at(10))) == [other["id"], mis["id"]]
    assert ids(await list_reports(client, headers, since="2026-01-15T10:00:00+01:00")) == [
        other["id"],
        mis["id"],
        dis["id"],
    ]
    assert ids(await list_reports(client, headers, until=at(9))) == [bp["id"]]
    assert ids(await list_reports(client, headers, since=at(9), until=at(11))) == [
        mis["id"],
        dis["id"],
    ]
    assert ids(await list_reports(client, headers, kind="misuse_concern", clinic="C2")) == []


async def test_cursor_walks_every_report_exactly_once(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    # Some share a time, so the order needs the id as a tie-breaker.
    times = [at(8), at(9), at(9), at(9), at(10), at(10), at(12)]
    created = [await create_report(client, nurse, bp_report(occurred_at=t)) for t in times]

    pages: list[list[dict[str, Any]]] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = await list_reports(client, nurse, **params)
        pages.append(page["items"])
        if page["next_cursor"] is None:
            break
        assert len(pages) < 10, "the cursor does not advance"
        params = {"limit": 3, "cursor": page["next_cursor"]}

    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [item for p in pages for item in p]
    assert sorted(i["id"] for i in seen) == sorted(c["id"] for c in created)
    keys = [(parse_time(i["occurred_at"]), uuid.UUID(i["id"])) for i in seen]
    assert keys == sorted(keys, reverse=True)


async def test_cursor_keeps_the_filters_it_is_used_with(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    for hour in (8, 9, 10):
        await create_report(client, nurse, bp_report(occurred_at=at(hour)))
        await create_report(client, nurse, dissociation_report(occurred_at=at(hour, 30)))
    first = await list_reports(client, nurse, kind="dissociation", limit=2)
    rest = await list_reports(
        client, nurse, kind="dissociation", limit=2, cursor=first["next_cursor"]
    )
    kinds = {item["kind"] for item in first["items"] + rest["items"]}
    assert kinds == {"dissociation"}
    assert len(first["items"]) + len(rest["items"]) == 3
    assert rest["next_cursor"] is None


@pytest.mark.parametrize("name", ["since", "until"])
async def test_list_times_need_an_offset(
    client: AsyncTestClient[Any], nurse: dict[str, str], name: str
) -> None:
    response = await client.get(REPORTS, params={name: "2026-01-15T10:00:00"}, headers=nurse)
    assert errors_of(response) == [(name, "offset_required")]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "",
        "é",
        b64(b"[1, 2]"),
        b64(b'["2026-01-15T10:00:00Z", "not-a-uuid"]'),
        b64(b"{}"),
    ],
)
async def test_a_bad_cursor_is_422(
    client: AsyncTestClient[Any], nurse: dict[str, str], cursor: str
) -> None:
    response = await client.get(REPORTS, params={"cursor": cursor}, headers=nurse)
    assert [field for field, _ in errors_of(response)] == ["cursor"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("since", "0001-01-01T00:00:00+01:00"),
        ("until", "9999-12-31T23:59:59-01:00"),
        ("cursor", b64(f'["0001-01-01T00:00:00+01:00", "{uuid.UUID(int=1)}"]'.encode())),
    ],
)
async def test_list_times_beyond_the_utc_range_are_422(
    client: AsyncTestClient[Any], nurse: dict[str, str], name: str, value: str
) -> None:
    response = await client.get(REPORTS, params={name: value}, headers=nurse)
    assert [field for field, _ in errors_of(response)] == [name]


async def test_a_nul_in_the_patient_ref_filter_is_not_a_server_error(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    response = await client.get(REPORTS, params={"patient_ref": "PT\x00001"}, headers=nurse)
    assert response.status_code in {200, 422}, response.text
    if response.status_code == 200:
        assert response.json()["items"] == []


@pytest.mark.parametrize("limit", ["0", "201", "-1", "many"])
async def test_a_bad_limit_is_422(
    client: AsyncTestClient[Any], nurse: dict[str, str], limit: str
) -> None:
    response = await client.get(REPORTS, params={"limit": limit}, headers=nurse)
    assert [field for field, _ in errors_of(response)] == ["limit"]


@pytest.mark.parametrize("limit", [1, 200])
async def test_limits_at_the_bounds_are_accepted(
    client: AsyncTestClient[Any], nurse: dict[str, str], limit: int
) -> None:
    await create_report(client, nurse, bp_report())
    await create_report(client, nurse, bp_report())
    page = await list_reports(client, nurse, limit=limit)
    assert len(page["items"]) == min(limit, 2)


async def test_an_unknown_kind_filter_is_422(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    response = await client.get(REPORTS, params={"kind": "fever"}, headers=nurse)
    assert [field for field, _ in errors_of(response)] == ["kind"]


# --- amending -------------------------------------------------------------------


async def test_amendment_adds_version_2_and_regrades(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report(systolic=165, diastolic=85))
    assert created["hypertension_reading_grade"] == 3
    response = await amend(client, nurse, created["id"], {"reason": "re-measured", "systolic": 148})
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["id"] == created["id"]
    assert view["version"] == 2
    assert view["body"]["systolic"] == 148
    assert view["body"]["diastolic"] == 85
    assert view["hypertension_reading_grade"] == 2
    assert [h["body"] for h in view["history"]] == [created["body"], view["body"]]

    v1, v2 = await version_rows(db, created["id"])
    assert (v1["version"], v1["body"], v1["hypertension_reading_grade"], v1["reason"]) == (
        1,
        created["body"],
        3,
        None,
    )
    assert (
        v2["version"],
        v2["body"]["systolic"],
        v2["hypertension_reading_grade"],
        v2["reason"],
    ) == (
        2,
        148,
        2,
        "re-measured",
    )
    assert (
        await db.fetchval("SELECT current_version FROM reports WHERE id = $1::uuid", created["id"])
        == 2
    )
    assert await stored(db) == Stored(1, 2, 1)


async def test_amending_patient_and_time_moves_the_report_in_listings(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report(occurred_at=at(8)))
    change = {"reason": "wrong patient", "patient_ref": "PT-777", "occurred_at": at(7)}
    response = await amend(client, nurse, created["id"], change)
    assert response.status_code == 201, response.text
    assert ids(await list_reports(client, nurse, patient_ref="PT-777")) == [created["id"]]
    assert ids(await list_reports(client, nurse, patient_ref="PT-001")) == []
    assert ids(await list_reports(client, nurse, since=at(8))) == []
    assert parse_time(response.json()["occurred_at"]) == datetime(2026, 1, 15, 7, tzinfo=UTC)


async def test_a_second_amendment_makes_version_3(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report())
    first = await amend(client, nurse, created["id"], {"reason": "pulse", "pulse": 80})
    second = await amend(client, nurse, created["id"], {"reason": "pulse again", "pulse": 84})
    assert (first.status_code, second.status_code) == (201, 201)
    view = second.json()
    assert view["version"] == 3
    assert [h["body"].get("pulse") for h in view["history"]] == [None, 80, 84]


async def wait_for_a_lock_wait(db: asyncpg.Connection[Any]) -> None:
    """Return once some other session of this database waits for a lock."""
    for _ in range(500):
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the request never waited for the report's lock")


async def test_an_amendment_waiting_for_a_concurrent_one_is_applied_after_it(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report())
    author = await db.fetchval("SELECT id FROM users WHERE username = 'nina'")
    concurrent = db.transaction()
    await concurrent.start()
    try:
        # What another amendment does, left uncommitted: version 2 and the new head.
        await db.execute(
            "INSERT INTO report_versions"
            " (report_id, version, body, hypertension_reading_grade, reason,"
            " created_by) VALUES ($1::uuid, 2, $2, 2, 'pulse', $3)",
            created["id"],
            {**created["body"], "pulse": 70},
            author,
        )
        await db.execute(
            "UPDATE reports SET current_version = 2 WHERE id = $1::uuid", created["id"]
        )
        request = client.build_request(
            "POST",
            f"{REPORTS}/{created['id']}/amendments",
            json={"reason": "re-measured", "systolic": 148},
            headers=nurse,
        )
        pending = asyncio.ensure_future(send_concurrently(client, [request]))
        await wait_for_a_lock_wait(db)
    finally:
        await concurrent.commit()
    [response] = await pending
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["version"] == 3
    assert (view["body"]["pulse"], view["body"]["systolic"]) == (70, 148)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"systolic": 40}, [("systolic", "range")]),
        ({"systolic": 90}, [("systolic", "above_diastolic")]),
        ({"colour": "red"}, [("colour", "unknown_field")]),
        ({"patient_ref": "bad ref"}, [("patient_ref", "pattern")]),
        ({"occurred_at": "2026-01-15T10:30:00"}, [("occurred_at", "offset_required")]),
        ({"seriousness": ["hospitalization"] * 2}, [("seriousness", "unique")]),
    ],
)
async def test_an_amendment_is_validated_like_a_new_report(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    change: dict[str, Any],
    expected: list[tuple[str, str]],
) -> None:
    created = await create_report(client, nurse, bp_report())
    response = await amend(client, nurse, created["id"], {"reason": "typo", **change})
    assert errors_of(response) == expected
    assert await stored(db) == Stored(1, 1, 1)
    assert await audit_rows(db, "report.amended") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"systolic": 148}, "reason"),
        ({"reason": None, "systolic": 148}, "reason"),
        ({"reason": "   ", "systolic": 148}, "reason"),
        ({"reason": "x" * 1001, "systolic": 148}, "reason"),
        ({"reason": 7, "systolic": 148}, "reason"),
    ],
)
async def test_an_amendment_needs_a_reason(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    body: dict[str, Any],
    field: str,
) -> None:
    created = await create_report(client, nurse, bp_report())
    response = await amend(client, nurse, created["id"], body)
    assert [f for f, _ in errors_of(response)] == [field]
    assert await stored(db) == Stored(1, 1, 1)


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"kind": "dissociation"}, ["kind"]),
        ({"clinic": "C2"}, ["clinic"]),
        ({"clinic": "C1"}, ["clinic"]),
        ({"kind": "dissociation", "clinic": "C2"}, ["clinic", "kind"]),
    ],
)
async def test_kind_and_clinic_are_fixed(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    change: dict[str, Any],
    fields: list[str],
) -> None:
    created = await create_report(client, nurse, bp_report())
    response = await amend(client, nurse, created["id"], {"reason": "move it", **change})
    assert sorted(errors_of(response)) == [(f, "fixed") for f in fields]
    assert await stored(db) == Stored(1, 1, 1)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"systolic": 150},
        {"systolic": 150, "diastolic": 92},
        {"occurred_at": "2026-01-15T09:30:00Z"},
        {"pulse": None},
    ],
)
async def test_an_amendment_that_changes_nothing_is_422(
    client: AsyncTestClient[Any],
    db: asyncpg.Connection[Any],
    nurse: dict[str, str],
    change: dict[str, Any],
) -> None:
    created = await create_report(client, nurse, bp_report())
    response = await amend(client, nurse, created["id"], {"reason": "again", **change})
    assert errors_of(response) == [("$", "no_change")]
    assert await stored(db) == Stored(1, 1, 1)


@pytest.mark.parametrize("content", [b"[]", b'"re-measured"', b"null"])
async def test_an_amendment_must_be_an_object(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], content: bytes
) -> None:
    created = await create_report(client, nurse, bp_report())
    response = await client.post(
        f"{REPORTS}/{created['id']}/amendments",
        content=content,
        headers={**nurse, "Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert await stored(db) == Stored(1, 1, 1)


async def test_amending_an_unknown_report_is_404(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    response = await amend(client, nurse, str(uuid.uuid4()), {"reason": "x", "systolic": 148})
    assert response.status_code == 404, response.text
    assert await stored(db) == Stored(0, 0, 0)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE report_versions SET body = '{}'::jsonb WHERE report_id = $1::uuid",
        "UPDATE report_versions SET hypertension_reading_grade = 0 WHERE report_id = $1::uuid",
        "DELETE FROM report_versions WHERE report_id = $1::uuid",
    ],
)
async def test_versions_cannot_be_changed_even_by_the_owner(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str], sql: str
) -> None:
    created = await create_report(client, nurse, bp_report())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute(sql, created["id"])
    [version] = await version_rows(db, created["id"])
    assert version["body"] == created["body"]
    assert version["hypertension_reading_grade"] == created["hypertension_reading_grade"]


async def test_versions_cannot_be_truncated(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await create_report(client, nurse, bp_report())
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await db.execute("TRUNCATE report_versions CASCADE")
    assert (await stored(db)).versions == 1


# --- audit ----------------------------------------------------------------------


async def test_create_is_audited_in_the_clinic_chain(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, bp_report())
    [entry] = await audit_rows(db, "report.created")
    assert entry["chain"] == "clinic:C1"
    assert entry["object_id"] == view["id"]
    assert entry["object_type"] == "report"
    assert entry["actor"] == "nina"
    assert entry["actor_role"] == "nurse"
    assert entry["details"]["kind"] == "blood_pressure"
    assert entry["details"]["version"] == 1


async def test_amendment_is_audited_with_changes_and_reason(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, bp_report())
    response = await amend(client, nurse, view["id"], {"reason": "re-measured", "systolic": 148})
    assert response.status_code == 201, response.text
    [entry] = await audit_rows(db, "report.amended", view["id"])
    assert entry["chain"] == "clinic:C1"
    assert entry["actor"] == "nina"
    assert entry["details"]["reason"] == "re-measured"
    assert entry["details"]["version"] == 2
    assert entry["details"]["changes"] == {"systolic": {"from": 150, "to": 148}}


async def test_read_is_audited(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, bp_report())
    for _ in range(2):
        response = await client.get(f"{REPORTS}/{view['id']}", headers=nurse)
        assert response.status_code == 200
    entries = await audit_rows(db, "report.read", view["id"])
    assert [(e["chain"], e["actor"]) for e in entries] == [("clinic:C1", "nina")] * 2


async def test_listing_is_audited_in_the_chain_of_the_clinics_listed(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    view = await create_report(client, nurse, bp_report())
    await list_reports(client, nurse, clinic="C1")
    await list_reports(client, nurse)
    entries = await audit_rows(db, "report.listed")
    assert sorted(e["chain"] for e in entries) == ["clinic:C1", "clinic:C1"]
    for entry in entries:
        assert entry["actor"] == "nina"
        assert entry["details"]["report_ids"] == [view["id"]]
        assert entry["details"]["count"] == 1


async def test_rejected_requests_are_not_audited_as_done(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any], nurse: dict[str, str]
) -> None:
    await client.get(f"{REPORTS}/{uuid.uuid4()}", headers=nurse)
    await client.get(REPORTS, params={"limit": 0}, headers=nurse)
    for action in ("report.read", "report.listed", "report.created"):
        assert await audit_rows(db, action) == []


# --- roles ----------------------------------------------------------------------


async def test_an_auditor_reads_but_does_not_write(world: World) -> None:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    await world.user("audrey", "auditor", ["C1"])
    nurse = await world.login("nina")
    auditor = await world.login("audrey")
    client = world.client
    view = await create_report(client, nurse, bp_report())

    response = await post_report(client, auditor, bp_report())
    assert response.status_code == 403, response.text
    response = await amend(client, auditor, view["id"], {"reason": "x", "systolic": 148})
    assert response.status_code == 403, response.text
    assert await stored(world.db) == Stored(1, 1, 1)

    assert ids(await list_reports(client, auditor)) == [view["id"]]
    response = await client.get(f"{REPORTS}/{view['id']}", headers=auditor)
    assert response.status_code == 200, response.text


async def test_reports_need_a_login(
    client: AsyncTestClient[Any], db: asyncpg.Connection[Any]
) -> None:
    assert (await client.get(REPORTS)).status_code == 401
    response = await client.post(REPORTS, json=bp_report(), headers={"Idempotency-Key": "k"})
    assert response.status_code == 401
    assert await stored(db) == Stored(0, 0, 0)
