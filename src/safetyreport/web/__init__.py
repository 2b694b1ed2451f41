"""The web front end: server-rendered pages, their scripts and the offline service worker."""

from __future__ import annotations

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from safetyreport.auth.permissions import PUBLIC
from safetyreport.web.assets import STATIC_DIR, STATIC_PATH
from safetyreport.web.routes import WebController, WebSessionController
from safetyreport.web.templating import template_config


def static_router() -> Router:
    """The files under web/static, public (the login page needs its style sheet too).

    ``no-cache`` makes browsers revalidate (ETag) on every online load; offline, the
    service worker answers from its own versioned copy.
    """
    return create_static_files_router(
        path=STATIC_PATH,
        directories=[STATIC_DIR],
        opt=PUBLIC,
        cache_control=CacheControlHeader(no_cache=True),
        include_in_schema=False,
    )


__all__ = ["WebController", "WebSessionController", "static_router", "template_config"]
