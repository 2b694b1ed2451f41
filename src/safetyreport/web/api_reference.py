"""The API reference at /schema: the OpenAPI document rendered on the server.

No script and nothing from another origin: the page is plain HTML with the service's
own style sheet, under the same Content-Security-Policy as every other page. (The
reference viewers Litestar offers load their JavaScript from a CDN into this origin.)
``/schema/openapi.json`` stays the machine-readable description.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Router
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.template import TemplateEngineProtocol

from safetyreport.web.assets import PAGE_HEADERS

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
_REF_PREFIX = "#/components/schemas/"


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    location: str
    type: str
    required: bool
    description: str


@dataclass(frozen=True, slots=True)
class Response:
    status: str
    description: str
    type: str


@dataclass(frozen=True, slots=True)
class Operation:
    anchor: str
    method: str
    path: str
    summary: str
    description: str
    public: bool
    parameters: list[Parameter]
    body: str
    responses: list[Response]


@dataclass(frozen=True, slots=True)
class SchemaDoc:
    name: str
    description: str
    type: str
    properties: list[Parameter] = field(default_factory=list)


def type_text(schema: dict[str, Any] | None) -> str:
    """A short, readable type: ``array of Report``, ``string (uuid)``, ``A | null``."""
    if not schema:
        return ""
    if "$ref" in schema:
        return str(schema["$ref"]).removeprefix(_REF_PREFIX)
    for combinator in ("oneOf", "anyOf", "allOf"):
        if combinator in schema:
            joiner = " & " if combinator == "allOf" else " | "
            return joiner.join(type_text(part) for part in schema[combinator])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        return " | ".join(type_text({**schema, "type": k}) for k in kind)
    if kind == "array":
        return f"array of {type_text(schema.get('items'))}"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def _content_type(content: dict[str, Any] | None) -> str:
    if not content:
        return ""
    return " | ".join(
        f"{media}: {type_text(spec.get('schema'))}" if spec.get("schema") else media
        for media, spec in content.items()
    )


def _operation(path: str, method: str, spec: dict[str, Any]) -> Operation:
    parameters = [
        Parameter(
            name=p["name"],
            location=p.get("in", ""),
            type=type_text(p.get("schema")),
            required=bool(p.get("required")),
            description=p.get("description", ""),
        )
        for p in spec.get("parameters", [])
    ]
    responses = [
        Response(status, r.get("description", ""), _content_type(r.get("content")))
        for status, r in sorted(spec.get("responses", {}).items())
    ]
    return Operation(
        anchor=spec.get("operationId") or f"{method}-{path}",
        method=method.upper(),
        path=path,
        summary=spec.get("summary", ""),
        description=spec.get("description", ""),
        public=spec.get("security") == [],
        parameters=parameters,
        body=_content_type(spec.get("requestBody", {}).get("content")),
        responses=responses,
    )


def operations_by_tag(document: dict[str, Any]) -> dict[str, list[Operation]]:
    groups: dict[str, list[Operation]] = {}
    for path, item in document.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                tag = (item[method].get("tags") or ["other"])[0]
                groups.setdefault(tag, []).append(_operation(path, method, item[method]))
    return dict(sorted(groups.items()))


def schema_docs(document: dict[str, Any]) -> list[SchemaDoc]:
    docs = []
    for name, schema in sorted(document.get("components", {}).get("schemas", {}).items()):
        required = set(schema.get("required", []))
        properties = [
            Parameter(prop, "", type_text(spec), prop in required, spec.get("description", ""))
            for prop, spec in schema.get("properties", {}).items()
        ]
        docs.append(SchemaDoc(name, schema.get("description", ""), type_text(schema), properties))
    return docs


class ApiReferencePlugin(OpenAPIRenderPlugin):
    """Serves the reference at the schema root; when turned off, that path is a 404."""

    def __init__(self, engine: TemplateEngineProtocol[Any, Any], enabled: bool) -> None:
        super().__init__(path="/", favicon="", style="")
        self.engine = engine
        self.enabled = enabled

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if not self.enabled:
            raise NotFoundException("the API reference page is turned off on this service")
        template = self.engine.get_template("api_reference.html")
        html = template.render(
            info=openapi_schema.get("info", {}),
            groups=operations_by_tag(openapi_schema),
            schemas=schema_docs(openapi_schema),
            json_url=self.get_openapi_json_route(request),
            openapi_version=openapi_schema.get("openapi", ""),
        )
        return str(html).encode()


def api_reference_router(path: str) -> Router:
    """The router of /schema: its pages carry the same headers as every other page."""
    return Router(path, route_handlers=[], include_in_schema=False, response_headers=PAGE_HEADERS)
