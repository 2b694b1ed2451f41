"""Streamed downloads (exports): one response shape for every feature that streams."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

from litestar.background_tasks import BackgroundTask
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Schema
from litestar.response import Stream


async def _close(body: AsyncGenerator[bytes, None]) -> None:
    """Close a streamed body once its response is over.

    Litestar stops iterating when the client hangs up but leaves the generator open;
    closing it at once returns its connection and lets it record how it ended. (Passing
    ``body.aclose`` itself would not do: Litestar does not see it as async.)
    """
    await body.aclose()


def download(
    body: AsyncGenerator[bytes, None], *, media_type: str, filename: str, export_id: str
) -> Stream:
    """A streamed attachment that is never cached and names its export."""
    return Stream(
        body,
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
            "X-Safetyreport-Export-Id": export_id,
        },
        background=BackgroundTask(_close, body),
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
