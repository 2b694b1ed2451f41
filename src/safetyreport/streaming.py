"""Streamed downloads (exports): one response shape for every feature that streams."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.enums import MediaType
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.utils.helpers import get_enum_string_value

if TYPE_CHECKING:
    from litestar.connection import Request
    from litestar.datastructures import Cookie
    from litestar.response.base import ASGIResponse
    from litestar.types import Message, Receive, Scope, Send, TypeEncodersMap

_log = logging.getLogger(__name__)


async def _close(body: AsyncGenerator[bytes, None], on_close: Callable[[], None]) -> None:
    """Close a streamed body once its response is over, then call ``on_close``.

    Litestar stops iterating when the client hangs up but leaves the generator open;
    closing it at once returns its connection and lets it record how it ended. (Passing
    ``body.aclose`` itself would not do: Litestar does not see it as async.)
    """
    try:
        await body.aclose()
    finally:
        on_close()


class _ClientStalled(Exception):
    """The client took no chunk within the send deadline."""


class _SendWithinDeadline(ASGIStreamingResponse):
    """A streamed body whose every chunk must be taken by the client within a deadline.

    A client that stops reading fills its socket buffers, and the send then waits for as
    long as the socket stays open. Past the deadline the stream ends here as if the
    client had hung up: the body is closed (its connection goes back, its end is
    recorded as incomplete) and the server drops the connection.
    """

    __slots__ = ("send_timeout",)

    def __init__(self, *, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.start_response(send=send)
            await self.send_body(send=send, receive=receive)
        finally:
            # However it ended (sent, abandoned, stalled, failed, cancelled), close the
            # body and run on_close: Litestar would skip them after an error.
            with anyio.CancelScope(shield=True):
                await self.after_response()

    async def send_body(self, send: Send, receive: Receive) -> None:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._stream_or_give_up, send, task_group.cancel_scope)
            await self._listen_for_disconnect(cancel_scope=task_group.cancel_scope, receive=receive)

    async def _stream_or_give_up(self, send: Send, scope: anyio.CancelScope) -> None:
        async def send_in_time(message: Message) -> None:
            try:
                with anyio.fail_after(self.send_timeout):
                    await send(message)
            except TimeoutError:
                raise _ClientStalled from None

        try:
            await self._stream(send_in_time)
        except _ClientStalled:
            _log.warning("a download ended: its client took nothing for %s s", self.send_timeout)
            scope.cancel()


class Download(Stream):
    """A ``Stream`` of an async generator, sent under ``_SendWithinDeadline``."""

    __slots__ = ("send_timeout",)

    def __init__(self, *args: Any, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send_timeout = send_timeout

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # As Stream.to_asgi_response builds its response, with the deadline.
        headers = {**headers, **self.headers} if headers is not None else self.headers
        cookies = self.cookies if cookies is None else itertools.chain(self.cookies, cookies)
        return _SendWithinDeadline(
            send_timeout=self.send_timeout,
            background=self.background or background,
            content_length=0,
            cookies=cookies,
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers=headers,
            is_head_response=is_head_response,
            iterator=self.iterator,
            media_type=get_enum_string_value(media_type or self.media_type or MediaType.JSON),
            status_code=self.status_code or status_code,
        )


def download(
    body: AsyncGenerator[bytes, None],
    *,
    media_type: str,
    filename: str,
    export_id: str,
    send_timeout: float,
    on_close: Callable[[], None] = lambda: None,
) -> Stream:
    """A streamed attachment that is never cached and names its export.

    ``send_timeout``: how long the client may leave a chunk untaken before the download
    ends. ``on_close`` runs once the body is closed, however the response ended.
    """
    return Download(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
            "X-Safetyreport-Export-Id": export_id,
        },
        background=BackgroundTask(_close, body, on_close),
        send_timeout=send_timeout,
    )


def download_operation(media_types: Mapping[str, Schema]) -> type[Operation]:
    """An OpenAPI operation whose 200 answer comes in one of ``media_types``.

    Litestar documents a ``Stream`` as JSON; an export answers in the media type its
    ``format`` names.
    """

    @dataclass
    class DownloadOperation(Operation):
        def __post_init__(self) -> None:
            ok = (self.responses or {}).get("200")
            if isinstance(ok, OpenAPIResponse):
                ok.content = {
                    media_type: OpenAPIMediaType(schema=schema)
                    for media_type, schema in media_types.items()
                }

    return DownloadOperation
