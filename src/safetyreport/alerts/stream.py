"""The live alert stream. (Being written: see the stream helper.)"""

from __future__ import annotations


class AlertBroker:
    """Listens for alert events on a dedicated connection and fans them out."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


from litestar import Controller, get  # noqa: E402


class AlertStreamController(Controller):
    path = "/api/v1/alerts/stream"
    tags = ["alerts"]

    @get("/")
    async def stream(self) -> None:
        """Placeholder until the stream is written."""
        return
