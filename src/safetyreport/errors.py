"""The error hierarchy and its single mapping to HTTP problem details (RFC 9457).

    AppError                  500  something the service itself got wrong
    ├── ServiceUnavailable    503  the database cannot be reached right now
    └── ClientError           400  the request cannot be served as sent
        ├── ValidationFailed  422  named fields broke named rules (``errors``)
        ├── NotAuthenticated  401  no valid token
        ├── Forbidden         403  the role may not do this
        ├── NotFound          404  no such object among the user's clinics
        ├── Conflict          409  a concurrent request holds the same key
        └── TooManyRequests   429  login throttled (``retry_after`` seconds)

Feature services raise these; nothing below the HTTP layer knows about responses.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    SerializationException,
    ValidationException,
)
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import SecurityRequirement
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from safetyreport.auth.permissions import PUBLIC_OPT

_log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


class FieldError(msgspec.Struct, frozen=True):
    field: str
    rule: str
    message: str


class AppError(Exception):
    status_code = HTTP_500_INTERNAL_SERVER_ERROR
    title = "Internal server error"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title


class ServiceUnavailable(AppError):
    status_code = 503
    title = "Service unavailable"


class ClientError(AppError):
    status_code = 400
    title = "Bad request"


class ValidationFailed(ClientError):
    status_code = 422
    title = "Validation failed"

    def __init__(self, errors: list[FieldError], detail: str | None = None) -> None:
        super().__init__(detail or "; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors

    @classmethod
    def one(cls, field: str, rule: str, message: str) -> ValidationFailed:
        return cls([FieldError(field, rule, message)])


class NotAuthenticated(ClientError):
    status_code = 401
    title = "Not authenticated"


class Forbidden(ClientError):
    status_code = 403
    title = "Forbidden"


class NotFound(ClientError):
    status_code = 404
    title = "Not found"


class Conflict(ClientError):
    status_code = 409
    title = "Conflict"


class RequestTimeout(ClientError):
    status_code = 408
    title = "Request timeout"


class PayloadTooLarge(ClientError):
    status_code = 413
    title = "Payload too large"


class TooManyRequests(ClientError):
    status_code = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Problem(msgspec.Struct, omit_defaults=True):
    title: str
    status: int
    detail: str
    type: str = "about:blank"
    errors: list[FieldError] | None = None


def _problem(
    status: int,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Problem]:
    return Response(
        Problem(title=title, status=status, detail=detail, errors=errors),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


# The database cannot be reached, or is going away or coming back: 503, retry shortly.
# OSError covers every way a connect fails: refused (TCP), no socket file (a stopped
# server on a Unix socket: FileNotFoundError), unknown host, reset.
_DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.exceptions.AdminShutdownError,  # 57P01: stopped under a running statement
    asyncpg.exceptions.CrashShutdownError,  # 57P02: another backend crashed
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    # A failover under way (docs/operations.md): a write reached a server that was just
    # demoted, or no server is the primary yet. The pool drops those connections
    # (db.pool.PRIMARY_LOST); the retry reaches the new primary.
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
    # The primary killed mid-statement can leave asyncpg's protocol state confused
    # ("cannot switch to state 12; another operation is in progress"): the connection
    # is done for, the next one is fine.
    asyncpg.InternalClientError,
)

# PostgreSQL refuses U+0000 in text (22021) and in jsonb (22P05).
_UNSTORABLE_TEXT = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)


_RULES = (
    (re.compile(r"^Expected `[^`]+`, got"), "type"),
    (re.compile(r"^Expected `[^`]+` (>=|<=|>|<) "), "range"),
    (re.compile(r"of length"), "length"),
    (re.compile(r"matching regex"), "pattern"),
    (re.compile(r"^Invalid enum value"), "enum"),
    (re.compile(r"RFC3339|datetime|UUID"), "format"),
    (re.compile(r"^Object missing required field"), "required"),
    (re.compile(r"^Object contains unknown field"), "unknown_field"),
)


# The field msgspec names (an unknown field's name may be empty: {"": 1}).
_QUOTED_FIELD = re.compile(r"field `([^`]*)`")


def rule_of(message: str) -> str:
    """A machine-readable rule name for one of msgspec's validation messages."""
    for pattern, rule in _RULES:
        if pattern.search(message):
            return rule
    return "invalid"


def _from_litestar_validation(exc: ValidationException) -> list[FieldError]:
    errors: list[FieldError] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        field = str(item.get("key") or "request")
        message = str(item.get("message", exc.detail))
        if field == "data":
            # Errors about the body as a whole: name the field msgspec quotes, if any.
            named = _QUOTED_FIELD.search(message)
            if named is None:
                errors.append(FieldError("$", "required", "the request needs a JSON body"))
                continue
            field = named[1]
        errors.append(FieldError(field, rule_of(message), message))
    return errors or [FieldError("request", "invalid", exc.detail)]


def primary_error(exc: Exception) -> Exception:
    """The error a response should be about.

    Litestar raises an ExceptionGroup when cleaning up a dependency fails while another
    error is on its way (a transaction's rollback on a connection the database just
    dropped): a database outage among them is the answer (503), else the error that
    started it.
    """
    if not isinstance(exc, ExceptionGroup):
        return exc
    leaves = [primary_error(inner) for inner in exc.exceptions]
    for leaf in leaves:
        if isinstance(leaf, _DATABASE_DOWN):
            return leaf
    cause = exc.__cause__
    return primary_error(cause) if isinstance(cause, Exception) else leaves[0]


def status_of(exc: Exception) -> int:
    """The status ``exception_to_response`` answers an exception raised outside a handler
    with, for the request log (authentication middleware errors)."""
    exc = primary_error(exc)
    if isinstance(exc, _DATABASE_DOWN) and not isinstance(exc, HTTPException | AppError):
        return 503
    status: int = getattr(exc, "status_code", 500)
    return status


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """The one place where exceptions become HTTP responses."""
    exc = primary_error(exc)
    if isinstance(exc, ValidationFailed):
        return _problem(exc.status_code, exc.title, exc.detail, exc.errors)
    if isinstance(exc, TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
        return _problem(exc.status_code, exc.title, exc.detail, headers=headers)
    if isinstance(exc, NotAuthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="safetyreport"'}
        return _problem(exc.status_code, exc.title, exc.detail, headers=headers)
    if isinstance(exc, AppError):
        return _problem(exc.status_code, exc.title, exc.detail)
    if isinstance(exc, ClientException) and isinstance(exc.__cause__, SerializationException):
        # The body could not be decoded at all.
        errors = [FieldError("$", "malformed_json", f"the body is not valid JSON: {exc.detail}")]
        return _problem(422, ValidationFailed.title, errors[0].message, errors)
    if isinstance(exc, ValidationException):
        # Litestar's own parameter checks (query and path values): name the field.
        errors = _from_litestar_validation(exc)
        return _problem(422, ValidationFailed.title, exc.detail, errors)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        if status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="safetyreport"'}
            return _problem(status, "Not authenticated", exc.detail, headers=headers)
        return _problem(status, HTTPStatus(status).phrase, exc.detail, headers=exc.headers)
    if isinstance(exc, _UNSTORABLE_TEXT):
        # A NUL that got past the input guard: the client's text, not our failure.
        errors = [FieldError("$", "no_nul", "text must not contain NUL (U+0000)")]
        return _problem(422, ValidationFailed.title, errors[0].message, errors)
    if isinstance(exc, RecursionError):
        _log.warning("refused a request nested too deeply on %s", request.url.path)
        return _problem(400, ClientError.title, "the request is nested too deeply")
    if isinstance(exc, _DATABASE_DOWN):
        _log.warning("database unavailable: %s", str(exc) or type(exc).__name__)
        return _problem(
            503,
            ServiceUnavailable.title,
            "the database is unavailable; retry shortly",
            headers={"Retry-After": "2"},
        )
    _log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _problem(500, AppError.title, "an unexpected error occurred; it has been logged")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: exception_to_response}


# --- the problems in the OpenAPI schema ---------------------------------------------

_PROBLEMS = {
    400: "The request cannot be served as sent",
    401: "No valid token (or, signing in, wrong credentials)",
    403: "The role may not do this",
    404: "No such object among the clinics of the user",
    409: "A concurrent request holds the same key, or changed the object first",
    413: "The body is too large",
    422: "Named fields broke named rules (errors)",
    429: "Too many failed logins; see Retry-After",
    503: "The database is unavailable; retry after Retry-After seconds",
}
_WITHOUT_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


def _problems_of(handler: HTTPRouteHandler, public: bool) -> dict[int, ResponseSpec]:
    statuses = set(_PROBLEMS)
    if public:
        statuses -= {403}
    else:
        statuses -= {429}
    if handler.http_methods <= _WITHOUT_BODY:
        statuses -= {409, 413}
    return {
        status: ResponseSpec(Problem, description=_PROBLEMS[status], media_type=PROBLEM_JSON)
        for status in sorted(statuses)
    }


def document_problems(app: Litestar, security: list[SecurityRequirement]) -> None:
    """Document the problems every operation may answer, and which ones need a token.

    Call once the app is built, before its schema is first generated. Operations open to
    anyone (``auth.permissions.PUBLIC``) get no ``security``; every other one gets ``security``.
    """
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            public = bool(handler.opt.get(PUBLIC_OPT))
            handler.responses = {**_problems_of(handler, public), **(handler.responses or {})}
            if not public:
                handler.security = [*(handler.security or ()), *security]
