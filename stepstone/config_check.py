"""Checking configuration values: every error names the file, the key and what was expected
(``stepstone.toml: workflows[0].class_name: expected a non-empty string, got 3``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stepstone.durations import to_millis
from stepstone.errors import ValidationError


class ConfigError(ValidationError):
    """A configuration file or an environment override is missing or invalid."""


class Checker:
    """Checks the values of one file; each failure is a ConfigError naming the file, the key and what was expected."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str, value: object) -> ConfigError:
        return ConfigError(f"{self.path.name}: {key}: expected {expected}, got {value!r}")

    def string(self, value: object, key: str, *, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string", value)
        if pattern is not None and not pattern.match(value):
            raise self.fail(key, what, value)
        return value

    def integer(self, value: object, key: str, *, low: int = 1, high: int | None = None) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high and value > high):
            bound = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
            raise self.fail(key, bound, value)
        return value

    def number(self, value: object, key: str, *, low: float, high: float, unit: str) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            raise self.fail(key, f"a number of {unit} from {low:g} to {high:g}", value)
        return float(value)

    def limit(self, value: object, key: str, *, rate: bool) -> float | int | None:
        """A limit that ``false`` turns off: a rate (instances per second > 0) or a count (an integer >= 1)."""
        if value is False:
            return None
        if rate:
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise self.fail(key, "a number of instances per second > 0, or false", value)
            return value
        return self.integer(value, key)

    def retention(self, value: object, key: str) -> dict[str, float]:
        """``{success = "7 days", error = "30 days"}`` (either key) as ``*_retention_ms`` fields."""
        table = self.table(value, key)
        out: dict[str, float] = {}
        for extra in sorted(set(table) - {"success", "error"}):
            raise self.fail(f"{key}.{extra}", "only the keys success and error", table[extra])
        if "success" in table:
            out["success_retention_ms"] = self.duration(table["success"], f"{key}.success")
        if "error" in table:
            out["error_retention_ms"] = self.duration(table["error"], f"{key}.error")
        return out

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "a table", value)
        return value

    def duration(self, value: object, key: str) -> float:
        if not isinstance(value, int | float | str) or isinstance(value, bool):
            raise self.fail(key, 'a duration such as "7 days"', value)
        try:
            return to_millis(value, what=key)
        except ValidationError:
            raise self.fail(key, 'a duration such as "7 days"', value) from None
