"""Static assets, their version, and the headers every page carries.

Nothing is loaded from the internet: every script, style sheet and icon is a file in
``web/static`` served by the service. The asset version is a hash of those files, so a
changed file yields a new service worker (its script embeds the version) that replaces
the offline copies.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
TEMPLATE_DIR = WEB_DIR / "templates"
STATIC_PATH = "/static"

# Pages the service worker keeps for offline use (refreshed whenever they load online).
OFFLINE_PAGES = ("/report", "/sessions/flowsheet", "/alerts", "/audit")

# No inline script or style, no inline event handlers, nothing from another origin.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages hold patient references and a CSRF token: never in a shared cache. The service
    # worker keeps its own copy for offline use.
    "Cache-Control": "no-store",
}


@cache
def static_files() -> tuple[str, ...]:
    """URL paths of every static asset, sorted."""
    return tuple(
        f"{STATIC_PATH}/{p.relative_to(STATIC_DIR).as_posix()}"
        for p in sorted(STATIC_DIR.rglob("*"))
        if p.is_file()
    )


@cache
def asset_version() -> str:
    """A short hash of every static file and template: changes whenever one does."""
    digest = hashlib.sha256()
    for directory in (STATIC_DIR, TEMPLATE_DIR):
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(WEB_DIR).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
