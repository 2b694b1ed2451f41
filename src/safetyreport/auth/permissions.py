"""Who may call what: the roles, the permission set of each route, and the public opt-out.

Routes name a permission set from here (``opt=allow(REPORT_WRITERS)``), never a tuple of
their own, so that one change here changes every route and page that shares the rule.
"""

from __future__ import annotations

from typing import Any, Literal

Role = Literal["nurse", "safety_officer", "auditor", "admin"]
ROLES: tuple[Role, ...] = ("nurse", "safety_officer", "auditor", "admin")

# The route option the role guard reads: the roles allowed to call the route.
ROLES_OPT = "roles"
# Litestar's own key: the authentication middleware skips routes that set it (login, health,
# static files). Routes set it through ``PUBLIC``, never as a bare string.
PUBLIC_OPT = "exclude_from_auth"
PUBLIC: dict[str, Any] = {PUBLIC_OPT: True}
# Web pages: authenticated by the cookie when it is valid, anonymous (user None) when not,
# so the page can send the browser to the login form. Page handlers that accept a POST
# check the CSRF token of their form themselves (a form cannot send a header).
PAGE_OPT = "page"

EVERYONE: tuple[Role, ...] = ROLES
# Reports: nurses and officers file and amend them; every role reads those of its clinics.
REPORT_WRITERS: tuple[Role, ...] = ("nurse", "safety_officer")
REPORT_READERS: tuple[Role, ...] = EVERYONE
# Alerts and rules: officers and admins work them; auditors may look.
ALERT_WORKERS: tuple[Role, ...] = ("safety_officer", "admin")
ALERT_READERS: tuple[Role, ...] = ("safety_officer", "admin", "auditor")
# The live alert stream is for those who act on alerts.
ALERT_STREAM: tuple[Role, ...] = ALERT_WORKERS
# The audit trail: searches, exports, verification.
AUDIT_READERS: tuple[Role, ...] = ("auditor", "admin")
# Users, devices, lock-outs, webhook targets.
ADMINS: tuple[Role, ...] = ("admin",)


def allow(roles: tuple[Role, ...]) -> dict[str, Any]:
    """Route options that let exactly ``roles`` call the route (checked by ``require_roles``)."""
    return {ROLES_OPT: roles}
