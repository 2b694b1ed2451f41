"""The Jinja environment of the pages (``litestar.plugins.jinja``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from safetyreport.alerts.triggers import describe_change
from safetyreport.web.assets import TEMPLATE_DIR


def utc_text(value: datetime | None) -> str:
    """A time as the page shows it before its script turns it into local time."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat()


def humanize(value: str) -> str:
    """``post_dose`` -> ``Post dose``, for values without a label of their own."""
    return value.replace("_", " ").capitalize()


def number(value: object) -> object:
    """``10.0`` -> ``10``: a whole quantity or dose as the nurse typed it; others as given."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def change(value: Any) -> str:
    """An amendment's change of one field (a ReportChange): "systolic 150 → 210"."""
    return describe_change(value.field, value.before, value.after)


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        # HTML is escaped; the service worker script (sw.js) only receives |tojson values.
        autoescape=select_autoescape(["html"], default_for_string=True),
        # A misspelt variable is an error, not an empty string on a page.
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        utc=utc_text, iso=iso, humanize=humanize, number=number, change=change
    )
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))
