"""Building the WHERE clause of a filtered list query, with numbered parameters."""

from __future__ import annotations

from typing import Any


class Where:
    """Conditions joined by AND, and the values of their ``$n`` parameters.

    Conditions are written by the feature module; only values are parameters, so no
    client input ever becomes SQL text.
    """

    def __init__(self) -> None:
        self._conditions: list[str] = []
        self.args: list[Any] = []

    def param(self, value: Any) -> str:
        """The placeholder for ``value`` (``$1``, ``$2``...)."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str) -> None:
        self._conditions.append(condition)

    def equals(self, column: str, value: Any) -> None:
        """``column = value``, unless ``value`` is None (no filter)."""
        if value is not None:
            self.add(f"{column} = {self.param(value)}")

    def in_clinics(self, column: str, clinic_ids: list[int] | None) -> None:
        """Limit to these clinics; None means every clinic.

        One clinic is an equality, so that an index leading with ``column`` gives a
        list's order (``= ANY`` of an array does not, and the rows would be sorted).
        """
        self.in_values(column, clinic_ids, "bigint")

    def in_values(self, column: str, values: list[Any] | None, sql_type: str) -> None:
        """``column`` is one of ``values`` (of ``sql_type``); None means no filter."""
        if values is None:
            return
        if len(values) == 1:
            self.add(f"{column} = {self.param(values[0])}")
        else:
            self.add(f"{column} = ANY({self.param(values)}::{sql_type}[])")

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self._conditions) if self._conditions else ""
