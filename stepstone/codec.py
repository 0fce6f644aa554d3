"""The stored form of values: JSON, plus ``bytes`` and ``datetime``; never pickle.

``bytes`` are stored as ``{"$bytes": "<base64>"}`` and ``datetime`` as ``{"$datetime": "<isoformat>"}``. A
step output streamed into the blob store is recorded as ``{"$blob": {"id": ..., "size": ...}}`` and decodes to
a :class:`BlobRef` (the step layer turns it into a reader). A user dict whose only key is ``$bytes``,
``$datetime``, ``$blob`` or ``$escape`` is stored as ``{"$escape": {...}}`` so it decodes unchanged. Tuples
become lists; dict keys must be strings; NaN and infinities are refused.
Subclasses of str, int and float are stored as their base type, and an aware datetime comes back with a
fixed-offset timezone (the same instant and offset). An object whose class defines ``__stepstone_stored__()``
is stored as what that returns (a ``WorkflowInstance`` a step returns is stored as ``{"id": ...}``) and comes
back as that plain value.

Text must be valid Unicode: a lone surrogate (``"\ud800"``, which JSON and Python allow but UTF-8 cannot
encode) in any string or key is refused here, with its path, so no backend ever sees it (the rule is
:mod:`stepstone.text`'s). A NUL is fine inside a value: the JSON text holds it as ``\u0000``.

Values with none of these special cases are checked by one quick walk and then handed to :func:`json.dumps`
as they are; only values that need it are rebuilt.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from stepstone.errors import SerializationError
from stepstone.text import text_problem

__all__ = ["BlobRef", "decode", "encode"]

_BYTES = "$bytes"
_BLOB = "$blob"
_DATETIME = "$datetime"
# A UTC offset with microseconds, which datetime.isoformat() writes and Python 3.11's fromisoformat() drops
# (``+00:00:00.000001`` parses as UTC there).
_FRACTIONAL_OFFSET = re.compile(r"([+-])(\d\d):(\d\d):(\d\d)\.(\d{6})$")
_ESCAPE = "$escape"
_RESERVED = frozenset((_BYTES, _DATETIME, _BLOB, _ESCAPE))
_ALLOWED = "(allowed: JSON values, bytes, datetime)"
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCALARS = frozenset((str, int, bool, type(None)))
STORED_FORM = "__stepstone_stored__"
"""The method a class defines to say how its objects are stored (returns a storable value)."""

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_loads = json.loads


@dataclass(frozen=True, slots=True)
class BlobRef:
    """The recorded form of a step output kept in the blob store: its id there and its size in bytes."""

    id: str
    size: int

    def stored(self) -> str:
        """The JSON text a step result holds for this blob."""
        return _dumps({_BLOB: {"id": self.id, "size": self.size}})


class _Unstorable(Exception):
    """Raised inside the walk; ``path`` collects the location on the way out (innermost first)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
        self.path: list[str | int] = []


def _kind(value: object) -> str:
    return type(value).__name__


def _check_float(value: float) -> None:
    if math.isnan(value) or math.isinf(value):
        raise _Unstorable(f"float {value!r}")


def _needs_rebuild(value: object, active: set[int]) -> bool:
    """Check ``value``; True as soon as it holds something json.dumps cannot write as is."""
    t = type(value)
    if t in _SCALARS:
        return False
    if t is float:
        _check_float(value)  # type: ignore[arg-type]
        return False
    if t is dict or t is list or t is tuple:
        ident = id(value)
        if ident in active:
            raise _Unstorable("cyclic reference")
        active.add(ident)
        if t is dict:
            d: dict[Any, Any] = value  # type: ignore[assignment]
            if len(d) == 1 and next(iter(d)) in _RESERVED:
                return True
            for k, v in d.items():
                if type(k) is not str:
                    return True  # the rebuild reports it, or converts a str subclass
                if _needs_rebuild(v, active):
                    return True
        else:
            for item in value:  # type: ignore[attr-defined]
                if _needs_rebuild(item, active):
                    return True
        active.discard(ident)
        return False
    return True


def _rebuild(value: object, active: set[int]) -> object:
    """The JSON-ready form of ``value``; raises :class:`_Unstorable` for anything not allowed."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        _check_float(value)
        return float(value)
    if isinstance(value, bytes):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, dict | list | tuple):
        ident = id(value)
        if ident in active:
            raise _Unstorable("cyclic reference")
        active.add(ident)
        out: object
        if isinstance(value, dict):
            obj: dict[str, object] = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _Unstorable(f"dict key {k!r} ({_kind(k)})")
                try:
                    obj[str(k)] = _rebuild(v, active)
                except _Unstorable as exc:
                    exc.path.append(str(k))
                    raise
            out = {_ESCAPE: obj} if len(obj) == 1 and next(iter(obj)) in _RESERVED else obj
        else:
            items: list[object] = []
            for i, item in enumerate(value):
                try:
                    items.append(_rebuild(item, active))
                except _Unstorable as exc:
                    exc.path.append(i)
                    raise
            out = items
        active.discard(ident)
        return out
    stored = getattr(type(value), STORED_FORM, None)
    if stored is not None:
        return _rebuild(stored(value), active)
    raise _Unstorable(_kind(value))


def _find_surrogate(value: object, path: list[str | int]) -> tuple[str, str, int] | None:
    """The first string (``"string"``) or key (``"key"``) in ``value`` with a lone surrogate, the surrogate and its
    index; ``path`` is left pointing at it, outermost first."""
    if isinstance(value, str):
        return _surrogate_at(value, "string")
    if isinstance(value, dict):
        for k, v in value.items():
            path.append(k)
            found = _surrogate_at(k, "key") if isinstance(k, str) else None
            if found is None:
                found = _find_surrogate(v, path)
            if found is not None:
                return found
            path.pop()
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            path.append(i)
            found = _find_surrogate(item, path)
            if found is not None:
                return found
            path.pop()
    return None


def _surrogate_at(text: str, kind: str) -> tuple[str, str, int] | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return kind, text[exc.start], int(exc.start)
    return None


def _format_path(path: list[str | int]) -> str:
    parts = ["$"]
    for step in reversed(path):
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif _IDENT_RE.fullmatch(step):
            parts.append(f".{step}")
        else:
            parts.append(f"[{json.dumps(step, ensure_ascii=text_problem(step, nul=False) is not None)}]")
    return "".join(parts)


def encode(value: object, *, what: str) -> str:
    """Encode a value to its stored text: compact JSON.

    Args:
        value: a JSON value (dict with str keys, list, tuple, str, int, float, bool, None), bytes or datetime,
            nested freely.
        what: what the value is, for error messages, e.g. ``'step "fetch-1" result'``.

    Returns:
        The JSON text.

    Raises:
        SerializationError: the value holds something else (a set, an object, a function, a non-str key,
            NaN, a cycle) or a string or key with a lone surrogate, e.g. ``step "fetch-1" result cannot be
            stored: set at $.items[2] (allowed: JSON values, bytes, datetime)``.
    """
    if value is None:  # the result of most steps
        return "null"
    original = value
    try:
        if _needs_rebuild(value, set()):
            value = _rebuild(value, set())
    except _Unstorable as exc:
        if not exc.path:
            # _needs_rebuild reports no path; walk again to find it.
            try:
                _rebuild(value, set())
            except _Unstorable as located:
                exc = located
        raise SerializationError(
            f"{what} cannot be stored: {exc.kind} at {_format_path(exc.path)} {_ALLOWED}"
        ) from None
    except RecursionError:
        raise SerializationError(f"{what} cannot be stored: it is nested too deeply {_ALLOWED}") from None
    try:
        text: str = _dumps(value)
    except ValueError as exc:  # e.g. an int with more digits than Python will print
        raise SerializationError(f"{what} cannot be stored: {exc}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            path: list[str | int] = []
            kind, char, index = _find_surrogate(original, path) or ("string", "\ud800", 0)
            raise SerializationError(
                f"{what} cannot be stored: a lone surrogate {char!r} at index {index} of the {kind} at "
                f"{_format_path(path[::-1])} (text must be valid Unicode)"
            ) from None
    return text


def _parse_datetime(text: str) -> datetime:
    match = _FRACTIONAL_OFFSET.search(text)
    if match is None:
        return datetime.fromisoformat(text)
    sign, hours, minutes, seconds, micros = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes), seconds=int(seconds), microseconds=int(micros))
    naive = datetime.fromisoformat(text[: match.start()])
    return naive.replace(tzinfo=timezone(-offset if sign == "-" else offset))


def _restore(value: object) -> object:
    if isinstance(value, list):
        return [_restore(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        key, inner = next(iter(value.items()))
        if key == _BYTES and isinstance(inner, str):
            return base64.b64decode(inner.encode("ascii"), validate=True)
        if key == _DATETIME and isinstance(inner, str):
            return _parse_datetime(inner)
        if key == _BLOB and isinstance(inner, dict) and isinstance(inner.get("id"), str):
            size = inner.get("size")
            if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
                return BlobRef(inner["id"], size)
        if key == _ESCAPE and isinstance(inner, dict):
            return {k: _restore(v) for k, v in inner.items()}
        if key in _RESERVED:
            raise ValueError(f"malformed {key} value {inner!r}")
    return {k: _restore(v) for k, v in value.items()}


def decode(text: str) -> object:
    """Decode stored text back to the value :func:`encode` was given (tuples come back as lists).

    Args:
        text: text made by :func:`encode`.

    Returns:
        The value.

    Raises:
        SerializationError: the text is not valid stored JSON.
    """
    if text == "null":
        return None
    try:
        value = _loads(text)
        if '"$' in text or "\\u0024" in text:
            value = _restore(value)
    except (ValueError, binascii.Error, RecursionError) as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise SerializationError(f"stored value {shown!r} cannot be decoded: {exc}") from None
    return value


REDACTED = "[REDACTED]"
"""What observers see in place of the output of a step marked ``sensitive: "output"``."""


def plain(value: object) -> Any:
    """A decoded value as plain JSON: datetimes become ISO strings, bytes base64 strings, a streamed output
    ``{"type": "binary", "size": n}`` (its bytes are served by ``GET .../step``)."""
    if isinstance(value, BlobRef):
        return {"type": "binary", "size": value.size}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
