"""What text every storage backend can store: the one rule, applied at the edge (bindings, server, limits, codec).

A lone surrogate (``"\\ud800"``: Python and JSON allow one, UTF-8 cannot encode it) fails on every backend; a NUL
character (``"\\x00"``) is refused by PostgreSQL ``text``. Checking here, before anything reaches storage, turns
both into a :class:`~stepstone.errors.ValidationError` naming the field (a 400 over REST) on SQLite and PostgreSQL
alike, instead of a driver error (a 500, or a 503 the SDK retries). Inside JSON values a NUL is fine (stored as
``\\u0000``), so :mod:`stepstone.codec` checks only for surrogates.
"""

from __future__ import annotations

from stepstone.errors import ValidationError, error_name

__all__ = ["check_text", "error_text", "storable", "text_problem"]


def text_problem(text: str, *, nul: bool = True) -> str | None:
    """Why ``text`` cannot be stored as is, or None: a lone surrogate (never encodable as UTF-8), or (with
    ``nul``, the default) a NUL character, which PostgreSQL text refuses."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"a lone surrogate {text[exc.start]!r} at index {exc.start} (text must be valid Unicode)"
    if nul and "\x00" in text:
        return f"a NUL character '\\x00' at index {text.index(chr(0))} (NUL is not allowed in text)"
    return None


def check_text(value: str, *, what: str) -> str:
    """``value`` if every backend can store it (see :func:`text_problem`).

    Raises:
        ValidationError: it holds a lone surrogate or a NUL character, e.g. ``class_name 'C\\ud800' cannot be
            stored: it holds a lone surrogate '\\ud800' at index 1 (text must be valid Unicode)``.
    """
    problem = text_problem(value)
    if problem is not None:
        shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
        raise ValidationError(f"{what} {shown} cannot be stored: it holds {problem}")
    return value


def storable(text: str) -> str:
    """``text`` with what no backend can store written out as escapes: a lone surrogate as ``\\ud800``, a NUL as
    ``\\x00`` (for text that must be kept rather than refused: an exception's name and message)."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def error_text(exc: BaseException) -> tuple[str, str]:
    """The name and message recorded for an exception, as every backend can store them (see :func:`storable`).

    An exception whose ``__str__`` itself fails is recorded with a message that says so, never lost.
    """
    try:
        message = str(exc)
    except Exception as failure:
        message = f"<the message of this {type(exc).__name__} cannot be shown: {type(failure).__name__}>"
    return storable(error_name(exc)), storable(message)
