"""Streaming report exports: each format, the list's filters and clinic scope, CSV cells
that spreadsheets cannot run, and the two audit entries of every export."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from litestar.testing import transport as litestar_transport

from safetyreport.csvsafe import neutralise
from safetyreport.reports import export as report_export
from safetyreport.reports.export import CHUNK_BYTES
from tests.helpers.reports import (
    REPORTS,
    adverse_report,
    amend,
    audit_rows,
    bp_report,
    create_report,
    dissociation_report,
    errors_of,
    misuse_report,
    seed_copies,
    stock_report,
)
from tests.helpers.world import World

EXPORT = f"{REPORTS}/export"
FORMATS = ("csv", "ndjson", "fhir")
# The documented column order; a change here is a change for every consumer.
CSV_HEADER = [
    "id",
    "clinic",
    "kind",
    "version",
    "patient_ref",
    "occurred_at",
    "created_at",
    "created_by",
    "updated_at",
    "meddra_term",
    "serious",
    "hypertension_reading_grade",
    "drug",
    "dose_mg",
    "weight_kg",
    "dose_mg_per_kg",
    "infusion_minutes",
    "minutes_after_dose",
    "outcome",
    "seriousness",
    "age_band",
    "phase",
    "systolic",
    "diastolic",
    "pulse",
    "respiratory_rate",
    "spo2",
    "syncope",
    "symptoms",
    "moaa_s",
    "severity",
    "cadss_total",
    "respiratory_depression",
    "resolved",
    "category",
    "verbatim_term",
    "cssrs.q1",
    "cssrs.q2",
    "cssrs.q3",
    "cssrs.q4",
    "cssrs.q5",
    "cssrs.q6",
    "phq9_item9",
    "rescue_medication",
    "ed_transfer",
    "urological_symptoms",
    "concern_type",
    "dast10_score",
    "incident_type",
    "discovered_at",
    "expected_quantity",
    "actual_quantity",
    "unit",
    "lot",
    "description",
    "narrative",
]


@pytest.fixture
async def nurse(world: World) -> dict[str, str]:
    await world.clinic("C1")
    await world.user("nina", "nurse", ["C1"])
    return await world.login("nina")


def at(hour: int, minute: int = 0) -> str:
    return f"2026-01-15T{hour:02d}:{minute:02d}:00+00:00"


async def export(
    client: AsyncTestClient[Any], headers: dict[str, str], fmt: str, **params: Any
) -> httpx.Response:
    response = await client.get(EXPORT, params={"format": fmt, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response


def csv_rows(response: httpx.Response) -> list[dict[str, str]]:
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    reader = csv.reader(io.StringIO(response.content.decode(), newline=""))
    header, *rows = list(reader)
    assert header == CSV_HEADER
    return [dict(zip(header, row, strict=True)) for row in rows]


def ndjson_items(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"] == "application/x-ndjson"
    text = response.content.decode()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def exported_ids(response: httpx.Response, fmt: str) -> list[str]:
    if fmt == "csv":
        return [row["id"] for row in csv_rows(response)]
    if fmt == "ndjson":
        return [item["id"] for item in ndjson_items(response)]
    return [entry["resource"]["id"] for entry in response.json().get("entry", [])]


async def ids_exported(
    client: AsyncTestClient[Any], headers: dict[str, str], fmt: str, **params: Any
) -> list[str]:
    return exported_ids(await export(client, headers, fmt, **params), fmt)


# --- neutralise ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell",
    ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'x", "=", "''", '=HYPERLINK("http://x")'],
)
def test_cells_a_spreadsheet_would_run_get_one_quote(cell: str) -> None:
    assert neutralise(cell) == "'" + cell
    assert neutralise(cell)[1:] == cell  # strip one quote: the value comes back


@pytest.mark.parametrize("cell", ["", "plain", "1-2", " =1", "a=b", "\n=1", "é", "PT-001"])
def test_other_cells_are_left_alone(cell: str) -> None:
    assert neutralise(cell) == cell


# --- formats ------------------------------------------------------------------------


async def test_csv_has_the_header_and_a_row_per_report_oldest_first(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    bp = await create_report(
        client,
        nurse,
        bp_report(occurred_at="2026-01-15T10:30:00+01:00", dose_mg=56, symptoms=["chest_pain"]),
    )
    mis = await create_report(client, nurse, misuse_report(occurred_at=at(12), dast10_score=4))
    dis = await create_report(
        client, nurse, dissociation_report(occurred_at=at(11), spo2=95, respiratory_rate=12)
    )

    response = await export(client, nurse, "csv")
    assert response.headers["content-disposition"].startswith('attachment; filename="reports-')
    assert response.headers["content-disposition"].endswith('.csv"')
    first, second, third = csv_rows(response)
    assert [first["id"], second["id"], third["id"]] == [bp["id"], dis["id"], mis["id"]]

    assert first["clinic"] == "C1"
    assert first["kind"] == "blood_pressure"
    assert first["version"] == "1"
    assert first["patient_ref"] == "PT-001"
    assert first["occurred_at"] == "2026-01-15T09:30:00+00:00"
    assert datetime.fromisoformat(first["created_at"]) == datetime.fromisoformat(bp["created_at"])
    assert first["created_at"].endswith("+00:00")
    assert first["updated_at"].endswith("+00:00")
    assert first["created_by"] == "nina"
    assert first["meddra_term"] == "Blood pressure increased"
    assert (first["serious"], first["seriousness"]) == ("false", "")
    assert first["hypertension_reading_grade"] == str(bp["hypertension_reading_grade"]) == "2"
    assert (first["systolic"], first["diastolic"], first["pulse"]) == ("150", "92", "")
    assert (first["dose_mg"], first["symptoms"], first["phase"]) == (
        "56.0",
        "chest_pain",
        "post_dose",
    )
    # Esketamine is not given by weight: no mg/kg.
    assert first["weight_kg"] == first["dose_mg_per_kg"] == ""
    assert first["moaa_s"] == first["concern_type"] == first["incident_type"] == ""

    assert (second["meddra_term"], second["moaa_s"], second["spo2"]) == ("Dissociation", "4", "95")
    assert second["respiratory_rate"] == "12"
    assert (second["resolved"], second["respiratory_depression"]) == ("true", "false")
    assert second["hypertension_reading_grade"] == ""

    assert third["meddra_term"] == "Drug seeking behaviour"
    assert (third["concern_type"], third["dast10_score"]) == ("drug_seeking", "4")
    assert (third["lot"], third["unit"], third["expected_quantity"]) == ("", "", "")
    assert third["description"] == "Asked for an extra dose before the session."


async def test_csv_has_the_columns_of_adverse_events_and_weight_based_doses(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    cssrs = {"q1": True, "q2": True, "q3": False, "q4": True, "q5": False, "q6": False}
    adverse = adverse_report(
        occurred_at=at(8),
        category="suicidality",
        verbatim_term="Says she does not want to wake up",
        cssrs=cssrs,
        phq9_item9=2,
        syncope=False,
    )
    await create_report(client, nurse, adverse)
    dose = dissociation_report(occurred_at=at(9), dose_mg=35, weight_kg=70, infusion_minutes=40)
    await create_report(client, nurse, dose)
    urological = adverse_report(
        occurred_at=at(10),
        category="urological",
        verbatim_term="Burning when passing urine",
        urological_symptoms=["dysuria", "frequency"],
    )
    await create_report(client, nurse, urological)
    first, second, third = csv_rows(await export(client, nurse, "csv"))

    assert (first["category"], first["verbatim_term"]) == (
        "suicidality",
        "Says she does not want to wake up",
    )
    # The term the service suggests, beside the nurse's own words.
    assert first["meddra_term"] == "Suicidal ideation"
    answers = [first[f"cssrs.q{n}"] for n in range(1, 7)]
    assert answers == ["true", "true", "false", "true", "false", "false"]
    assert (first["phq9_item9"], first["syncope"]) == ("2", "false")
    assert first["rescue_medication"] == first["urological_symptoms"] == ""

    assert (second["dose_mg"], second["weight_kg"], second["dose_mg_per_kg"]) == (
        "35.0",
        "70.0",
        "0.5",
    )
    assert second["infusion_minutes"] == "40"
    assert second["cssrs.q1"] == second["category"] == ""

    assert third["urological_symptoms"] == "dysuria;frequency"
    assert third["meddra_term"] == "Dysuria"


async def test_stock_incidents_are_exported_without_a_patient(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    bp = await create_report(client, nurse, bp_report(occurred_at=at(8)))
    stock = await create_report(
        client,
        nurse,
        stock_report(discovered_at="2026-01-15T10:00:00+01:00", lot="L-1"),
    )
    assert stock["patient_ref"] is None

    bp_row, stock_row = csv_rows(await export(client, nurse, "csv"))
    assert (bp_row["id"], stock_row["id"]) == (bp["id"], stock["id"])
    assert stock_row["kind"] == "stock_incident"
    assert stock_row["patient_ref"] == ""
    # Its time is when it was discovered, in UTC like every time.
    assert stock_row["occurred_at"] == stock_row["discovered_at"] == "2026-01-15T09:00:00+00:00"
    assert (stock_row["incident_type"], stock_row["lot"], stock_row["unit"]) == (
        "theft",
        "L-1",
        "ml",
    )
    assert (stock_row["expected_quantity"], stock_row["actual_quantity"]) == ("10.0", "8.0")
    assert stock_row["description"] == "Two vials missing from the locked cabinet."
    # No seriousness, no outcome, no event term: not "not serious", but not applicable.
    for column in (
        "meddra_term",
        "serious",
        "seriousness",
        "outcome",
        "hypertension_reading_grade",
    ):
        assert stock_row[column] == "", column

    items = ndjson_items(await export(client, nurse, "ndjson"))
    assert [item["id"] for item in items] == [bp["id"], stock["id"]]
    assert items[1]["patient_ref"] is None
    assert items[1]["body"]["incident_type"] == "theft"

    # The FHIR bundle leaves it out: it has no AdverseEvent.
    assert await ids_exported(client, nurse, "fhir") == [bp["id"]]
    assert await ids_exported(client, nurse, "fhir", kind="stock_incident") == []


async def test_csv_shows_the_current_version_and_seriousness(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    created = await create_report(client, nurse, bp_report(systolic=185, diastolic=85))
    change = {"reason": "hospital", "seriousness": ["hospitalization", "disability"]}
    assert (await amend(client, nurse, created["id"], change)).status_code == 201
    [row] = csv_rows(await export(client, nurse, "csv"))
    assert (row["version"], row["serious"]) == ("2", "true")
    assert row["seriousness"] == "hospitalization;disability"
    assert row["meddra_term"] == "Hypertensive urgency"


async def test_ndjson_lines_are_the_reports_as_listed(
    client: AsyncTestClient[Any], nurse: dict[str, str]
) -> None:
    for body in (bp_report(occurred_at=at(9)), dissociation_report(occurred_at=at(8))):
        await create_report(client, nurse, body)
    await create_report(client, nurse, misuse_report(occurred_at=at(10)))
    listed = (await client.get(REPORTS, headers=nurse)).json()["items"]

    response = await export(client, nurse, "ndjson")
    assert response.headers["content-disposition"].endswith('.ndjson"')
    assert ndjson_items(response) == list(reversed(listed))


@pytest.mark.parametrize("fmt", FORMATS)
async def test_an_export_of_nothing_is_still_well_formed(
    client: AsyncTestClient[Any], nurse: dict[str, str], fmt: str
) -> None:
    assert await ids_exported(client, nurse, fmt) == []


# --- filters and scope --------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_the_list_filters_apply(world: World, fmt: str) -> None:
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

    async def ids(**params: Any) -> list[str]:
        return await ids_exported(client, headers, fmt, **params)

    assert await ids() == [bp["id"], dis["id"], mis["id"], other["id"]]
    assert await ids(kind="blood_pressure") == [bp["id"], other["id"]]
    assert await ids(clinic="C2") == [other["id"]]
    assert await ids(clinic="C1", kind="blood_pressure") == [bp["id"]]
    assert await ids(patient_ref="PT-002") == [dis["id"]]
    assert await ids(since=at(10)) == [mis["id"], other["id"]]  # inclusive
    assert await ids(since="2026-01-15T10:00:00+01:00") == [dis["id"], mis["id"], other["id"]]
    assert await ids(until=at(9)) == [bp["id"]]  # exclusive
    assert await ids(since=at(9), until=at(11)) == [dis["id"], mis["id"]]
    assert await ids(kind="misuse_concern", clinic="C2") == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "xml"}, "format"),
        ({"format": "csv", "kind": "fever"}, "kind"),
        ({"format": "csv", "since": "2026-01-15T10:00:00"}, "since"),
        ({"format": "csv", "until": "2026-01-15"}, "until"),
        ({"format": "csv", "patient_ref": "PT 001"}, "patient_ref"),
    ],
)
async def test_bad_parameters_are_422_and_not_audited(
    world: World, nurse: dict[str, str], params: dict[str, str], field: str
) -> None:
    response = await world.client.get(EXPORT, params=params, headers=nurse)
    assert [name for name, _ in errors_of(response)] == [field]
    assert await audit_rows(world.db, "report.export_started") == []


async def test_the_format_is_required(world: World, nurse: dict[str, str]) -> None:
    response = await world.client.get(EXPORT, headers=nurse)
    assert response.status_code == 422, response.text
    assert "format" in response.json()["detail"]
    assert await audit_rows(world.db, "report.export_started") == []


@dataclass(frozen=True)
class TwoClinics:
    client: AsyncTestClient[Any]
    db: asyncpg.Connection[Any]
    c1_nurse: dict[str, str]
    c2_nurse: dict[str, str]
    c1_report: dict[str, Any]
    c2_report: dict[str, Any]


@pytest.fixture
async def two(world: World) -> TwoClinics:
    await world.clinic("C1")
    await world.clinic("C2")
    await world.user("ada", "nurse", ["C1"])
    await world.user("bea", "nurse", ["C2"])
    c1_nurse = await world.login("ada")
    c2_nurse = await world.login("bea")
    c1_report = await create_report(world.client, c1_nurse, bp_report("C1", patient_ref="PT-C1"))
    c2_report = await create_report(world.client, c2_nurse, bp_report("C2", patient_ref="PT-C2"))
    return TwoClinics(world.client, world.db, c1_nurse, c2_nurse, c1_report, c2_report)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_another_clinics_reports_are_never_exported(two: TwoClinics, fmt: str) -> None:
    for params in ({}, {"patient_ref": "PT-C1"}, {"kind": "blood_pressure"}, {"clinic": "C2"}):
        response = await export(two.client, two.c2_nurse, fmt, **params)
        assert two.c1_report["id"] not in response.text
        assert "PT-C1" not in response.text
    assert await ids_exported(two.client, two.c2_nurse, fmt) == [two.c2_report["id"]]
    assert await ids_exported(two.client, two.c1_nurse, fmt) == [two.c1_report["id"]]


async def test_exporting_another_clinic_looks_like_a_missing_clinic(two: TwoClinics) -> None:
    params = {"format": "csv"}
    foreign = await two.client.get(EXPORT, params={**params, "clinic": "C1"}, headers=two.c2_nurse)
    missing = await two.client.get(EXPORT, params={**params, "clinic": "C9"}, headers=two.c2_nurse)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["detail"].replace("C1", "C9") == missing.json()["detail"]
    assert await audit_rows(two.db, "report.export_started") == []
    assert await audit_rows(two.db, "report.exported") == []


async def test_an_auditor_of_every_clinic_exports_both(world: World, two: TwoClinics) -> None:
    await world.user("audrey", "auditor", all_clinics=True)
    auditor = await world.login("audrey")
    both = [two.c1_report["id"], two.c2_report["id"]]
    assert sorted(await ids_exported(two.client, auditor, "ndjson")) == sorted(both)
    assert await ids_exported(two.client, auditor, "csv", clinic="C2") == [two.c2_report["id"]]


async def test_it_needs_a_token(client: AsyncTestClient[Any]) -> None:
    response = await client.get(EXPORT, params={"format": "csv"})
    assert response.status_code == 401


# --- CSV injection ------------------------------------------------------------------


async def test_csv_cells_cannot_run_as_formulas(world: World) -> None:
    await world.clinic("C1")
    await world.user("-nina", "nurse", ["C1"])  # usernames may start with '-'
    headers = await world.login("-nina")
    dangerous = {
        "narrative": '=HYPERLINK("http://evil.example","click")',
        "patient_ref": "-2-3",
    }
    created = [
        await create_report(world.client, headers, bp_report(occurred_at=at(8), **dangerous)),
        await create_report(
            world.client,
            headers,
            stock_report(
                discovered_at=at(9),
                description="+cmd|' /C calc'!A0",
                lot="@SUM(1+1)",
            ),
        ),
        await create_report(
            world.client, headers, dissociation_report(occurred_at=at(10), narrative="\rCR")
        ),
        await create_report(
            world.client, headers, dissociation_report(occurred_at=at(11), narrative="'quoted")
        ),
        await create_report(
            world.client,
            headers,
            dissociation_report(occurred_at=at(12), narrative='plain, "quoted"\nnext line'),
        ),
        await create_report(
            world.client,
            headers,
            adverse_report(occurred_at=at(13), verbatim_term="=1+1 headache", narrative="\tTAB"),
        ),
    ]
    rows = csv_rows(await export(world.client, headers, "csv"))
    assert [row["id"] for row in rows] == [c["id"] for c in created]
    first, second, third, fourth, fifth, sixth = rows

    assert first["narrative"] == "'" + dangerous["narrative"]
    assert first["patient_ref"] == "'-2-3"
    assert second["description"] == "'+cmd|' /C calc'!A0"
    assert second["lot"] == "'@SUM(1+1)"
    assert second["patient_ref"] == ""
    assert sixth["verbatim_term"] == "'=1+1 headache"
    assert sixth["narrative"] == "'\tTAB"
    assert third["narrative"] == "'\rCR"
    assert fourth["narrative"] == "''quoted"
    assert fifth["narrative"] == 'plain, "quoted"\nnext line'  # nothing to neutralise
    assert {row["created_by"] for row in rows} == {"'-nina"}

    # Reversible: strip one leading quote and every stored value comes back.
    for row, report in zip(rows, created, strict=True):
        for name in ("patient_ref", "narrative", "description", "lot", "verbatim_term"):
            stored = report["body"].get(name)
            if stored is not None:
                cell = row[name]
                assert (cell[1:] if cell.startswith("'") else cell) == stored


# --- audit ----------------------------------------------------------------------------


async def test_an_export_is_audited_when_it_starts_and_when_it_ends(
    world: World, nurse: dict[str, str]
) -> None:
    for hour in (8, 9, 10):
        await create_report(world.client, nurse, bp_report(occurred_at=at(hour)))
    response = await export(
        world.client, nurse, "csv", clinic="C1", kind="blood_pressure", since=at(9)
    )

    [started] = await audit_rows(world.db, "report.export_started")
    [ended] = await audit_rows(world.db, "report.exported")
    export_id = response.headers["x-safetyreport-export-id"]
    filters = {"clinic": "C1", "kind": "blood_pressure", "since": "2026-01-15T09:00:00Z"}
    for entry in (started, ended):
        assert (entry["actor"], entry["actor_role"]) == ("nina", "nurse")
        assert (entry["object_type"], entry["object_id"]) == ("report_export", export_id)
        assert entry["chain"] == "clinic:C1"
        assert entry["details"]["format"] == "csv"
        assert entry["details"]["filters"] == filters
    assert started["seq"] < ended["seq"]
    assert ended["details"]["count"] == 2
    assert ended["details"]["completed"] is True
    assert ended["details"]["bytes"] == len(response.content)
    assert ended["details"]["sha256"] == hashlib.sha256(response.content).hexdigest()


async def test_an_export_without_a_clinic_is_audited_in_the_chains_of_its_clinics(
    world: World, nurse: dict[str, str]
) -> None:
    await create_report(world.client, nurse, bp_report())
    await export(world.client, nurse, "fhir")
    chains = [
        (e["chain"], e["details"]["format"])
        for action in ("report.export_started", "report.exported")
        for e in await audit_rows(world.db, action)
    ]
    assert chains == [("clinic:C1", "fhir"), ("clinic:C1", "fhir")]


# --- large exports, streamed ------------------------------------------------------------


@dataclass
class Streamed:
    """What a client saw of a streamed response, chunk by chunk."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)


class HangingUpClient:
    """Calls the app as a server would, and can pause at the first chunk, then hang up.

    The test client gathers a whole body before answering; this shows each chunk as the
    app sends it. With ``hang_up``, the first chunk blocks (a client that stopped reading)
    until ``resume()``; then the client disconnects, as a closed browser tab does.
    """

    def __init__(self, client: AsyncTestClient[Any], *, hang_up: bool) -> None:
        self.client = client
        self.hang_up = hang_up
        self.received = Streamed()
        self.first_chunk = threading.Event()
        self._resumed = threading.Event()
        self._finished = threading.Event()

    def resume(self) -> None:
        self._resumed.set()

    async def get(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Streamed:
        request = self.client.build_request("GET", path, params=params, headers=headers)
        scope = litestar_transport.TestClientTransport(client=self.client).parse_request(request)
        scope.update(method="GET", http_version="1.1", extensions={})
        await asyncio.to_thread(self._call_app, scope)
        return self.received

    def _call_app(self, scope: dict[str, Any]) -> None:
        with self.client.portal() as portal:
            portal.call(self.client.app, scope, self._receive(), self._send)

    def _receive(self) -> Any:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            wait_for = self._resumed if self.hang_up else self._finished
            await anyio.to_thread.run_sync(wait_for.wait)
            return {"type": "http.disconnect"}

        return receive

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.received.status = message["status"]
            self.received.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            return
        if message["body"]:
            self.received.chunks.append(message["body"])
        if not message.get("more_body", False):
            self._finished.set()
        if self.hang_up and len(self.received.chunks) == 1:
            self.first_chunk.set()
            await anyio.to_thread.run_sync(self._resumed.wait)
        elif self.hang_up:
            await anyio.sleep_forever()  # never reads again; the disconnect ends it


async def test_a_large_export_streams_in_chunks(world: World, nurse: dict[str, str]) -> None:
    template = await create_report(world.client, nurse, bp_report(occurred_at=at(0)))
    await create_report(
        world.client, nurse, dissociation_report(occurred_at="2026-01-14T00:00:00Z")
    )
    await seed_copies(world.db, template["id"], 3000)

    streamed = await HangingUpClient(world.client, hang_up=False).get(
        EXPORT, {"format": "csv"}, nurse
    )
    assert streamed.status == 200
    assert len(streamed.chunks) > 5
    # Chunks are handed on as they fill: none holds much more than one chunk's worth.
    assert max(len(c) for c in streamed.chunks) < 2 * CHUNK_BYTES
    body = b"".join(streamed.chunks)
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    assert len(rows) == 3002
    assert len({row["id"] for row in rows}) == 3002
    assert rows[0]["kind"] == "dissociation"
    times = [datetime.fromisoformat(row["occurred_at"]) for row in rows]
    assert times == sorted(times)
    assert times[-1] - times[1] == timedelta(minutes=3000)

    [ended] = await audit_rows(world.db, "report.exported")
    assert (ended["details"]["count"], ended["details"]["completed"]) == (3002, True)
    assert ended["details"]["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("fmt", ["ndjson", "fhir"])
async def test_large_exports_in_the_other_formats_are_whole(
    world: World, nurse: dict[str, str], fmt: str
) -> None:
    template = await create_report(world.client, nurse, misuse_report(occurred_at=at(0)))
    await seed_copies(world.db, template["id"], 2000)
    ids = await ids_exported(world.client, nurse, fmt)
    assert len(ids) == len(set(ids)) == 2001
    assert ids[0] == template["id"]


_OPEN_TRANSACTIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND state LIKE 'idle in transaction%'
"""


async def test_a_client_that_hangs_up_ends_an_export_recorded_as_incomplete(
    world: World, nurse: dict[str, str]
) -> None:
    template = await create_report(world.client, nurse, bp_report(occurred_at=at(0)))
    await seed_copies(world.db, template["id"], 3000)
    client = HangingUpClient(world.client, hang_up=True)
    streaming = asyncio.create_task(client.get(EXPORT, {"format": "ndjson"}, nurse))

    await asyncio.to_thread(client.first_chunk.wait)
    # The first chunk is out: the start is already on record, the end not yet.
    [started] = await audit_rows(world.db, "report.export_started")
    assert await audit_rows(world.db, "report.exported") == []
    client.resume()
    streamed = await streaming

    assert streamed.status == 200
    [ended] = await audit_rows(world.db, "report.exported")
    assert ended["object_id"] == started["object_id"]
    assert ended["details"]["completed"] is False
    assert 0 < ended["details"]["count"] < 3001
    # Its snapshot ended with it, and another export runs to the end.
    assert await world.db.fetchval(_OPEN_TRANSACTIONS) == 0
    assert len(await ids_exported(world.client, nurse, "ndjson")) == 3001


async def test_an_export_that_fails_gives_its_place_back(
    world: World, nurse: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More failed exports than a user may run at once: none of them keeps its place."""
    await create_report(world.client, nurse, bp_report())

    @contextlib.asynccontextmanager
    async def unreachable(pool: Any) -> AsyncIterator[Any]:
        raise OSError("the database went away")
        yield  # an async generator, as read_snapshot is

    monkeypatch.setattr(report_export, "read_snapshot", unreachable)
    for _ in range(3):  # the cap is 2 per user
        try:
            response = await world.client.get(EXPORT, params={"format": "csv"}, headers=nurse)
        except Exception:  # noqa: S112 (the test client hands on the stream's error)
            continue
        assert response.status_code != 429, response.text
    monkeypatch.undo()

    assert len(await ids_exported(world.client, nurse, "csv")) == 1
    ended = await audit_rows(world.db, "report.exported")
    assert [e["details"]["completed"] for e in ended].count(False) == 3
