"""HTTP routes for each patient's history: thin wrappers over patients/service.py."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.params import Parameter

from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import REPORT_READERS, allow
from safetyreport.patients import service
from safetyreport.reports.types import PATIENT_REF_PATTERN
from safetyreport.request_context import CallerDep, DbDep


class PatientController(Controller):
    path = "/api/v1/patients"
    tags = ["patients"]
    guards = [require_roles]
    opt = allow(REPORT_READERS)

    @get("/{patient_ref:str}/timeline")
    async def timeline(
        self,
        db: DbDep,
        caller: CallerDep,
        patient_ref: Annotated[str, Parameter(pattern=PATIENT_REF_PATTERN)],
    ) -> service.Timeline:
        """The patient's sessions (opened, dosed, observed, discharged), reports and
        alerts in time order, with the doses of the last 30, 90 and 365 days; linked
        across clinics by ``network_ref``, shown at the clinics you are granted. Audited
        as a read in each clinic's chain; 404 for a patient unknown at your clinics."""
        return await service.timeline(db, caller, patient_ref)
