from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepstone.codec import decode, encode
from stepstone.errors import SerializationError

UTC = dt.UTC
TZ = dt.timezone(dt.timedelta(hours=5, minutes=30))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"a": 1, "b": [1, 2, 3], "c": "x"}, '{"a":1,"b":[1,2,3],"c":"x"}'),
        ("é", '"é"'),
        (None, "null"),
        (1.5, "1.5"),
        ((1, 2), "[1,2]"),
        (b"\x00\xff", '{"$bytes":"AP8="}'),
        (dt.datetime(2024, 1, 2, 3, 4, 5, 6), '{"$datetime":"2024-01-02T03:04:05.000006"}'),
        (dt.datetime(2024, 1, 2, tzinfo=UTC), '{"$datetime":"2024-01-02T00:00:00+00:00"}'),
        ({"$bytes": "x"}, '{"$escape":{"$bytes":"x"}}'),
        ({"$escape": 1}, '{"$escape":{"$escape":1}}'),
        ({"$datetime": b"a"}, '{"$escape":{"$datetime":{"$bytes":"YQ=="}}}'),
        ({"$other": 1}, '{"$other":1}'),
        ({"$bytes": 1, "b": 2}, '{"$bytes":1,"b":2}'),
    ],
)
def test_encode(value: object, text: str) -> None:
    assert encode(value, what="v") == text


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1, 2, 3], "c": "x"},
        b"",
        b"\x00\x01binary",
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=TZ),
        {"nested": [{"$bytes": "not bytes"}, {"$datetime": "x"}, {"$escape": {"$bytes": "y"}}]},
        {"$escape": {"$escape": {"$escape": b"z"}}},
        [True, False, None, 0, -1, 2**80, 0.1, -0.0, "", "\u0024bytes"],
        {"k": {"$bytes": [dt.datetime(2000, 1, 1), b"q"]}},
    ],
)
def test_round_trip(value: object) -> None:
    assert decode(encode(value, what="v")) == value


def test_tuple_becomes_list() -> None:
    assert decode(encode({"t": (1, (2, b"x"))}, what="v")) == {"t": [1, [2, b"x"]]}


def test_aware_datetime_keeps_offset() -> None:
    value = dt.datetime(2024, 6, 1, 12, tzinfo=TZ)
    back = decode(encode(value, what="v"))
    assert isinstance(back, dt.datetime)
    assert back == value
    assert back.utcoffset() == value.utcoffset()


class _Thing:
    pass


def _cyclic_list() -> list[object]:
    x: list[object] = [1]
    x.append(x)
    return x


def _cyclic_dict() -> dict[str, object]:
    d: dict[str, object] = {}
    d["self"] = {"again": d}
    return d


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"items": [1, 2, {3}]},
            r"^step \"fetch-1\" result cannot be stored: set at \$\.items\[2\] \(allowed: ",
        ),
        ({3}, r"set at \$ \(allowed: JSON values, bytes, datetime\)$"),
        (_Thing(), r"_Thing at \$ "),
        ({"f": len}, r"builtin_function_or_method at \$\.f "),
        ({"a b": [None, [lambda: 1]]}, r'function at \$\["a b"\]\[1\]\[0\] '),
        ({1: "x"}, r"dict key 1 \(int\) at \$ "),
        ({"a": {None: 1}}, r"dict key None \(NoneType\) at \$\.a "),
        ({"a": [math.nan]}, r"float nan at \$\.a\[0\] "),
        ([1, math.inf], r"float inf at \$\[1\] "),
        ([b"x", -math.inf], r"float -inf at \$\[1\] "),
        (_cyclic_list(), r"cyclic reference at \$\[1\] "),
        (_cyclic_dict(), r"cyclic reference at \$\.self\.again "),
        (bytearray(b"x"), r"bytearray at \$ "),
        (dt.date(2024, 1, 1), r"date at \$ "),
        ({"$bytes": {1, 2}}, r'set at \$\["\$bytes"\] '),
    ],
)
def test_encode_rejects(value: object, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        encode(value, what='step "fetch-1" result')


def test_huge_int_is_an_error() -> None:
    with pytest.raises(SerializationError, match=r"^v cannot be stored: .*digits"):
        encode([10**5000], what="v")


def test_shared_non_cyclic_reference_ok() -> None:
    shared = [1, 2]
    assert decode(encode({"a": shared, "b": shared}, what="v")) == {"a": [1, 2], "b": [1, 2]}


def test_deep_nesting_is_an_error() -> None:
    value: object = 1
    for _ in range(100_000):
        value = [value]
    with pytest.raises(SerializationError, match="nested too deeply"):
        encode(value, what="v")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", r"stored value '\{' cannot be decoded"),
        ('{"$bytes":"!!"}', r"cannot be decoded"),
        ('{"$bytes":1}', r"malformed \$bytes value 1"),
        ('{"$datetime":"nope"}', r"cannot be decoded: Invalid isoformat"),
        ('{"$escape":[1]}', r"malformed \$escape value \[1\]"),
    ],
)
def test_decode_rejects(text: str, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        decode(text)


def test_str_and_int_subclasses_stored_as_base() -> None:
    import enum

    class Color(enum.StrEnum):
        RED = "red"

    class Num(enum.IntEnum):
        ONE = 1

    text = encode({Color.RED: [Color.RED, Num.ONE]}, what="v")
    assert text == '{"red":["red",1]}'
    back = decode(text)
    assert back == {"red": ["red", 1]}
    assert type(next(iter(back))) is str


_offsets = st.timedeltas(min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59))
_tz = st.none() | st.just(UTC) | st.builds(dt.timezone, _offsets)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.binary()
    | st.datetimes(timezones=_tz)
)
_keys = st.text() | st.sampled_from(["$bytes", "$datetime", "$escape", "$other"])
_values = st.recursive(
    _leaves,
    lambda children: st.lists(children) | st.dictionaries(_keys, children),
    max_leaves=30,
)


def _same(a: object, b: object) -> bool:
    """Equal, and of the same types throughout (so 1 vs 1.0 or True vs 1 would fail)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dt.datetime):
        assert isinstance(b, dt.datetime)
        return a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.utcoffset() == b.utcoffset()
    return a == b


@given(_values)
def test_round_trip_property(value: object) -> None:
    text = encode(value, what="v")
    assert _same(decode(text), value)
    assert encode(decode(text), what="v") == text


@pytest.mark.parametrize("micros", [1, -1, 3_600_000_001, -3_600_000_001])
def test_an_offset_with_microseconds_comes_back_whole(micros: int) -> None:
    # Python 3.11's fromisoformat reads "+00:00:00.000001" as UTC; hypothesis found that loss.
    value = dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=micros)))
    back = decode(encode(value, what="v"))
    assert isinstance(back, dt.datetime)
    assert back.utcoffset() == value.utcoffset()
    assert back == value
