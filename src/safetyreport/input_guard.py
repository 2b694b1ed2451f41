"""Refusing input no handler can store: NUL characters, and JSON nested too deeply.

PostgreSQL cannot store U+0000 in text or jsonb, and msgspec gives up on JSON nested
about a thousand deep with a RecursionError; either used to end in a 500. A hook checks
every request once, after its authorization and before its handler parses anything:
the path, the query, and the body of handlers that take one (JSON or a URL-encoded
form). A NUL is a 422 naming the field (rule ``no_nul``); a JSON
body nested deeper than ``MAX_JSON_DEPTH`` is a 400, refused before it is decoded.

The body is read through Litestar's own request, which keeps it (and its decoded
form) in the scope, so the handler parses exactly the bytes checked here, with the
route's body size limit and the body deadline applying as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions import SerializationException
from litestar.types import Scope

from safetyreport.errors import ClientError, FieldError, ValidationFailed

# Far more than any request of this API needs (a rule's conditions are the deepest).
MAX_JSON_DEPTH = 64
NUL = "\x00"
# The only way a NUL reaches a decoded JSON string (raw control characters are invalid).
_JSON_NUL = b"\\u0000"

# A JSON string (skipped whole, escapes included) or a bracket.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class NestedTooDeeply(ClientError):
    status_code = 400
    title = "Bad request"


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON in ``body`` opens more than ``limit`` arrays or objects at once."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # cannot nest deeper than it has brackets
    depth = 0
    for match in _JSON_TOKEN.finditer(body):
        token = match[0]
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every (path, string) in decoded JSON, keys included; depth is already bounded."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path != "$" else str(key)
            yield child, str(key)
            yield from _strings(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def _nul_errors(pairs: Iterator[tuple[str, str]]) -> list[FieldError]:
    errors: dict[str, FieldError] = {}
    for field, text in pairs:
        if NUL in text and field not in errors:
            errors[field] = FieldError(field, "no_nul", "text may not contain NUL characters")
    return list(errors.values())


def _body_media_type(scope: Scope) -> RequestEncodingType | str | None:
    """How the route's handler decodes the body, or None when it takes no ``data``."""
    handler = scope.get("route_handler")
    parameter = handler.parsed_fn_signature.parameters.get("data") if handler else None
    kwarg = parameter.kwarg_definition if parameter is not None else None
    return getattr(kwarg, "media_type", RequestEncodingType.JSON) if parameter else None


async def _body_errors(request: Request[Any, Any, Any]) -> list[FieldError]:
    media_type = _body_media_type(request.scope)
    if media_type == RequestEncodingType.JSON:
        body = await request.body()
        if json_depth_exceeds(body):
            raise NestedTooDeeply(f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        if _JSON_NUL not in body:
            return []  # JSON can carry a NUL only escaped: no need to decode the body here
        try:
            decoded = await request.json()
        except SerializationException:
            return []  # the handler answers malformed JSON as it always has
        return _nul_errors(_strings(decoded, "$"))
    if media_type == RequestEncodingType.URL_ENCODED:
        form = await request.form()
        return _nul_errors(pair for key, value in form.multi_items() for pair in _form(key, value))
    return []


def _form(key: str, value: Any) -> Iterator[tuple[str, str]]:
    yield key, key
    if isinstance(value, str):
        yield key, value


async def reject_unstorable_input(request: Request[Any, Any, Any]) -> None:
    """Litestar ``before_request`` hook: 422 for NUL characters, 400 for over-deep JSON.

    It runs after authentication and the route's guards (a user without the right gets
    403, not a verdict on the input) and before the handler's parameters are parsed.
    """
    errors = _nul_errors(iter([("path", request.url.path)]))
    errors += _nul_errors(
        pair
        for key, value in request.query_params.multi_items()
        for pair in ((key, key), (key, value))
    )
    errors += await _body_errors(request)
    if errors:
        raise ValidationFailed(errors)
