"""Typed values: params declared by ``WorkflowEntrypoint[Params]`` and step results declared by a return type.

A type is *typed* here when it is, or holds (``list[Order]``, ``Order | None``), a pydantic model, a dataclass
or a ``TypedDict``. :func:`convert` checks a plain stored value (JSON, bytes, datetime) against such a type and
builds the typed object; :func:`to_plain` turns a typed object back into the plain form the codec stores.
Stored values are always the plain form, so a replay builds the same object the live call returned.

pydantic is optional (``stepstone[pydantic]``): it is imported only when a pydantic model is met, and its
models are checked by pydantic itself. Dataclasses and ``TypedDict`` are checked here, the same whether pydantic
is installed or not: strict JSON types (an ``int`` field refuses ``"3"``; a ``float`` one takes ``3``), unknown
keys refused, missing required keys reported, every mismatch listed by field in
:attr:`~stepstone.errors.ValidationError.errors`.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from stepstone.errors import ValidationError

__all__ = ["convert", "is_typed", "return_type", "to_plain"]

Loc = tuple[str | int, ...]

_MAX_SHOWN = 60
_RESOLVED: dict[tuple[object, str, int], object | None] = {}
"""String return annotations already resolved, by (code object, annotation, globals): steps run often."""
_WRAPPERS = tuple(getattr(typing, name) for name in ("Required", "NotRequired", "ReadOnly") if hasattr(typing, name))


def _pydantic_model(tp: object) -> bool:
    """Whether ``tp`` is a pydantic model class (without importing pydantic when nothing did)."""
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _record_type(tp: object) -> bool:
    return (isinstance(tp, type) and dataclasses.is_dataclass(tp)) or typing.is_typeddict(tp) or _pydantic_model(tp)


def is_typed(tp: object) -> bool:
    """Whether ``tp`` is or holds a pydantic model, a dataclass or a TypedDict."""
    if _record_type(tp):
        return True
    return any(is_typed(arg) for arg in typing.get_args(tp) if not isinstance(arg, str))


def return_type(fn: Callable[..., Any]) -> object | None:
    """The typed return annotation of a step function, or None (no annotation, or a plain one like ``dict``)."""
    target: Any = fn
    while hasattr(target, "func") and hasattr(target, "args"):  # functools.partial
        target = target.func
    annotations = getattr(target, "__annotations__", None)
    if not annotations or "return" not in annotations:
        return None
    hint = annotations["return"]
    if isinstance(hint, str):  # ``from __future__ import annotations``: resolved once per def statement
        key = (getattr(target, "__code__", None), hint, id(getattr(target, "__globals__", None)))
        if key in _RESOLVED:
            return _RESOLVED[key]
        try:
            resolved = typing.get_type_hints(target).get("return")
        except Exception:  # a name only the function's own scope knew: leave the result untyped
            resolved = None
        if len(_RESOLVED) > 4096:
            _RESOLVED.clear()
        _RESOLVED[key] = resolved if is_typed(resolved) else None
        return _RESOLVED[key]
    try:
        typed = _TYPED_HINTS.get(hint)
    except TypeError:  # an unhashable annotation
        return hint if is_typed(hint) else None
    if typed is None:
        if len(_TYPED_HINTS) > 4096:
            _TYPED_HINTS.clear()
        typed = _TYPED_HINTS[hint] = is_typed(hint)
    return hint if typed else None


_TYPED_HINTS: dict[object, bool] = {}
"""Whether each annotation seen is typed (every step call asks; ``-> None`` and ``-> dict`` are the common ones)."""


def _name(tp: object) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _field(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= _MAX_SHOWN else shown[: _MAX_SHOWN - 3] + "..."


class _Checker:
    """One conversion: collects every mismatch with its location."""

    def __init__(self) -> None:
        self.errors: list[tuple[Loc, str]] = []

    def fail(self, loc: Loc, message: str) -> None:
        self.errors.append((loc, message))

    def expected(self, loc: Loc, what: str, value: object) -> None:
        self.fail(loc, f"expected {what}, got {type(value).__name__} {_show(value)}")

    def convert(self, tp: Any, value: object, loc: Loc) -> Any:
        if tp is Any or tp is object or isinstance(tp, typing.TypeVar | str):
            return value
        if tp is None or tp is type(None):
            if value is not None:
                self.expected(loc, "null", value)
            return None
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            return self.convert(typing.get_args(tp)[0], value, loc)
        if origin in _WRAPPERS:
            return self.convert(typing.get_args(tp)[0], value, loc)
        if origin is typing.Union or origin is types.UnionType:
            return self._union(tp, value, loc)
        if origin is typing.Literal:
            if value not in typing.get_args(tp):
                self.fail(loc, f"expected one of {list(typing.get_args(tp))!r}, got {_show(value)}")
            return value
        if _pydantic_model(tp):
            return self._pydantic(tp, value, loc)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self._dataclass(tp, value, loc)
        if typing.is_typeddict(tp):
            return self._typeddict(tp, value, loc)
        if origin is not None:
            return self._generic(tp, origin, value, loc)
        return self._scalar(tp, value, loc)

    def _union(self, tp: Any, value: object, loc: Loc) -> Any:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            trial = _Checker()
            converted = trial.convert(arg, value, loc)
            if not trial.errors:
                return converted
        if len([a for a in args if a is not type(None)]) == 1:
            (only,) = (a for a in args if a is not type(None))
            return self.convert(only, value, loc)  # report the one real type's own errors
        self.expected(loc, " | ".join(_name(a) for a in args), value)
        return value

    def _scalar(self, tp: Any, value: object, loc: Loc) -> Any:
        if tp is bool:
            if not isinstance(value, bool):
                self.expected(loc, "a boolean", value)
            return value
        if tp is int:
            if not isinstance(value, int) or isinstance(value, bool):
                self.expected(loc, "an integer", value)
            return value
        if tp is float:
            if not isinstance(value, int | float) or isinstance(value, bool):
                self.expected(loc, "a number", value)
                return value
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                self.expected(loc, "a string", value)
            return value
        if tp is datetime:
            if isinstance(value, datetime):
                return value
            if isinstance(value, str):
                try:
                    return datetime.fromisoformat(value)
                except ValueError:
                    pass
            self.expected(loc, "a datetime (or an ISO 8601 string)", value)
            return value
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            if isinstance(value, tp):
                return value
            try:
                return tp(value)
            except ValueError:
                self.fail(loc, f"expected one of {[m.value for m in tp]!r}, got {_show(value)}")
                return value
        if tp in (dict, list, tuple, set, frozenset):
            return self._generic(tp, tp, value, loc)
        if isinstance(tp, type) and not isinstance(value, tp):
            self.expected(loc, f"a {tp.__name__}", value)
        return value

    def _generic(self, tp: Any, origin: Any, value: object, loc: Loc) -> Any:
        args = typing.get_args(tp)
        if isinstance(origin, type) and issubclass(origin, Mapping):
            if not isinstance(value, Mapping):
                self.expected(loc, "an object", value)
                return value
            vtype = args[1] if len(args) == 2 else Any
            return {k: self.convert(vtype, v, (*loc, str(k))) for k, v in value.items()}
        if isinstance(origin, type) and issubclass(origin, Sequence | set | frozenset) and origin is not str:
            if not isinstance(value, list | tuple | set | frozenset):
                self.expected(loc, "an array", value)
                return value
            items = list(value)
            if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                if len(items) != len(args):
                    self.fail(loc, f"expected {len(args)} items, got {len(items)}")
                    return value
                return tuple(self.convert(a, v, (*loc, i)) for i, (a, v) in enumerate(zip(args, items, strict=True)))
            itype = args[0] if args else Any
            out = [self.convert(itype, v, (*loc, i)) for i, v in enumerate(items)]
            if origin is tuple:
                return tuple(out)
            if origin in (set, frozenset):
                return origin(out)
            return out
        return value

    def _fields_of(self, tp: type, value: object, loc: Loc) -> Mapping[str, Any] | None:
        if not typing.is_typeddict(tp) and isinstance(value, tp):
            value = to_plain(value)
        if not isinstance(value, Mapping):
            self.expected(loc, f"an object ({tp.__name__})", value)
            return None
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            self.fail(loc, f"keys must be strings, got {_show(bad[0])}")
            return None
        return value

    def _hints(self, tp: type) -> dict[str, Any]:
        try:
            return typing.get_type_hints(tp, include_extras=True)
        except Exception:  # forward references this module cannot resolve: check those fields loosely
            return {k: Any for k in getattr(tp, "__annotations__", {})}

    def _dataclass(self, tp: type, value: object, loc: Loc) -> Any:
        fields = self._fields_of(tp, value, loc)
        if fields is None:
            return value
        hints = self._hints(tp)
        declared = {f.name: f for f in dataclasses.fields(tp) if f.init}
        kwargs: dict[str, Any] = {}
        for key in fields:
            if key not in declared:
                self.fail((*loc, key), f"unexpected field (allowed: {', '.join(declared) or 'none'})")
        for name, f in declared.items():
            if name in fields:
                kwargs[name] = self.convert(hints.get(name, Any), fields[name], (*loc, name))
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail((*loc, name), "field required")
        if self.errors:
            return value
        try:
            return tp(**kwargs)
        except Exception as exc:  # a __post_init__ that refuses the values
            self.fail(loc, f"{tp.__name__}(...) raised {type(exc).__name__}: {exc}")
            return value

    def _typeddict(self, tp: type, value: object, loc: Loc) -> Any:
        fields = self._fields_of(tp, value, loc)
        if fields is None:
            return value
        hints = self._hints(tp)
        required = set(getattr(tp, "__required_keys__", hints))
        # Python 3.11 does not see NotRequired[...] written as a string (``from __future__ import annotations``).
        for key, hint in hints.items():
            if typing.get_origin(hint) is typing.NotRequired:
                required.discard(key)
            elif typing.get_origin(hint) is typing.Required:
                required.add(key)
        out: dict[str, Any] = {}
        for key, item in fields.items():
            if key not in hints:
                self.fail((*loc, key), f"unexpected field (allowed: {', '.join(hints) or 'none'})")
                continue
            out[key] = self.convert(hints[key], item, (*loc, key))
        for key in hints:
            if key in required and key not in fields:
                self.fail((*loc, key), "field required")
        return out

    def _pydantic(self, tp: Any, value: object, loc: Loc) -> Any:
        import pydantic

        if isinstance(value, tp):
            return value
        try:
            return tp.model_validate(value)
        except pydantic.ValidationError as exc:
            for err in exc.errors():
                where = tuple(p for p in err.get("loc", ()) if isinstance(p, str | int))
                message = str(err.get("msg", "invalid"))
                self.fail((*loc, *where), message[:1].lower() + message[1:])
            return value


def convert(tp: object, value: object, *, what: str) -> Any:
    """``value`` (plain, as stored) checked against ``tp`` and built into it.

    Args:
        tp: the declared type (a pydantic model, a dataclass, a TypedDict, or a type holding them).
        value: the plain value, or already an object of the type (it is checked all the same).
        what: names the value in the message (``params of instance 'x'``).

    Raises:
        ValidationError: the value does not match; the message names each field and ``errors`` lists them,
            e.g. ``params of instance 'x' do not match SignupParams: email: field required``.
    """
    checker = _Checker()
    result = checker.convert(tp, value, ())
    if checker.errors:
        listed = [{"field": _field(loc) or "(value)", "message": message} for loc, message in checker.errors]
        shown = "; ".join(f"{e['field']}: {e['message']}" for e in listed[:10])
        more = f" (and {len(listed) - 10} more)" if len(listed) > 10 else ""
        raise ValidationError(f"{what} do not match {_name(tp)}: {shown}{more}", errors=listed)
    return result


def to_plain(value: object) -> Any:
    """The plain form of a typed value: pydantic models dumped in JSON mode, dataclasses as dicts (recursively),
    enums as their values; JSON values, bytes and datetimes unchanged."""
    if _pydantic_model(type(value)):
        return value.model_dump(mode="json")  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(v) for v in value]
    return value
