"""``/api/v1/notifications``: the webhook delivery ledger, for admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Controller, get
from litestar.params import FromPath, QueryParameter

from safetyreport.alerts import notifications
from safetyreport.alerts.notifications import NotificationDetail, NotificationPage, Status
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ADMINS, allow
from safetyreport.request_context import CallerDep, DbDep


class NotificationController(Controller):
    path = "/api/v1/notifications"
    tags = ["notifications"]
    guards = [require_roles]
    opt = allow(ADMINS)

    @get("/")
    async def list_notifications(
        self,
        db: DbDep,
        caller: CallerDep,
        status: Annotated[Status | None, QueryParameter()] = None,
        alert: Annotated[uuid.UUID | None, QueryParameter()] = None,
        cursor: Annotated[str | None, QueryParameter()] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
    ) -> NotificationPage:
        """The delivery ledger of your clinics, newest first, a page at a time (admins only)."""
        return await notifications.list_notifications(
            db, caller, status=status, alert=alert, cursor=cursor, limit=limit
        )

    @get("/{notification_id:uuid}")
    async def read_notification(
        self, db: DbDep, caller: CallerDep, notification_id: FromPath[uuid.UUID]
    ) -> NotificationDetail:
        """One notification: its payload and every delivery attempt (admins only)."""
        return await notifications.read_notification(db, caller, notification_id)
