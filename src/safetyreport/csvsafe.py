"""CSV cells that spreadsheets show as text instead of running them as formulas."""

from __future__ import annotations

# What makes Excel, LibreOffice or Google Sheets read a cell as a formula (OWASP "CSV
# injection"), plus the quote itself, so that the rule can be undone without doubt.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def neutralise(cell: str) -> str:
    """``cell`` with one ``'`` put in front when it starts with ``= + - @``, tab, CR or ``'``.

    Spreadsheets treat a leading ``'`` as "this is text" and do not show it. A cell
    that already starts with ``'`` gets one more, so the rule is reversible: strip one
    leading ``'`` from a cell that starts with ``'`` and the original value comes back.
    Every other cell is returned unchanged.

    The offline verifier (``audit.offline.restore_cell``) undoes it: change both or neither.
    """
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell
