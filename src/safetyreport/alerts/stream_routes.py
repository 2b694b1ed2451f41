"""``GET /api/v1/alerts/stream``: new and changed alerts as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent

from safetyreport.alerts.stream import alert_messages
from safetyreport.auth.http import require_roles
from safetyreport.auth.permissions import ALERT_STREAM, allow
from safetyreport.pagination import BIGINT_MAX
from safetyreport.request_context import CallerDep, StateDep

LastEventIdHeader = Annotated[
    int | None, HeaderParameter(name="Last-Event-ID", required=False, ge=0, le=BIGINT_MAX)
]
LastEventIdQuery = Annotated[int | None, QueryParameter(ge=0, le=BIGINT_MAX)]


class AlertStreamController(Controller):
    path = "/api/v1/alerts/stream"
    tags = ["alerts"]
    guards = [require_roles]
    opt = allow(ALERT_STREAM)

    @get("/", media_type="text/event-stream")
    async def stream(
        self,
        request: Request[Any, Any, Any],
        caller: CallerDep,
        app_state: StateDep,
        last_event_id_header: LastEventIdHeader = None,
        last_event_id: LastEventIdQuery = None,
    ) -> ServerSentEvent:
        """New and changed alerts of your clinics as Server-Sent Events (``event: alert``).

        Each message's ``id`` is the event id. Reconnect with the ``Last-Event-ID`` header
        (or ``?last_event_id=`` where headers cannot be set) to receive every event after
        it first. Comments are sent as keep-alives.
        """
        # The header wins: a browser's EventSource sends the latest id there, while the
        # query parameter stays whatever the page first opened the stream with.
        after = last_event_id if last_event_id_header is None else last_event_id_header
        # The session token, so that a logout ends the stream.
        token = str(request.auth)
        return ServerSentEvent(
            alert_messages(app_state.pool, app_state.broker, caller, token, after)
        )
