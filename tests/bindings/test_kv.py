"""KV on SQLite and PostgreSQL: get types, put options and expiry, list paging, metadata, Cloudflare's errors."""

from __future__ import annotations

import pytest

from stepstone.bindings.errors import KVError
from stepstone.bindings.kv import KVNamespace
from stepstone.bindings.values import JsObject, ReadableStream
from stepstone.storage.bindings_base import BindingStore
from stepstone.testing import FakeClock

from .conftest import Opener


@pytest.fixture
def kv(store: BindingStore, clock: FakeClock) -> KVNamespace:
    return KVNamespace(store, "ns-1", clock)


async def test_get_put_delete_and_every_type(kv: KVNamespace) -> None:
    assert await kv.get("missing") is None
    await kv.put("k", '{"a": [1, 2]}')
    assert await kv.get("k") == '{"a": [1, 2]}'
    value = await kv.get("k", "json")
    assert value == {"a": [1, 2]} and isinstance(value, JsObject) and value.a == [1, 2]
    assert await kv.get("k", {"type": "json"}) == {"a": [1, 2]}
    assert await kv.get("k", type="arrayBuffer") == b'{"a": [1, 2]}'
    assert await kv.get("k", type="bytes") == b'{"a": [1, 2]}'
    stream = await kv.get("k", type="stream")
    assert isinstance(stream, ReadableStream) and await stream.text() == '{"a": [1, 2]}'
    await kv.put("bin", b"\x00\xff")
    assert await kv.get("bin", "arrayBuffer") == b"\x00\xff"
    await kv.put("streamed", ReadableStream([b"ab", b"cd"]))
    assert await kv.get("streamed") == "abcd"
    await kv.delete("k")
    await kv.delete("never-there")
    assert await kv.get("k") is None


async def test_metadata_and_get_with_metadata(kv: KVNamespace) -> None:
    await kv.put("k", "v", metadata={"owner": "ada", "n": 1})
    got = await kv.getWithMetadata("k")
    assert got.value == "v" and got.metadata == {"owner": "ada", "n": 1} and got["metadata"].owner == "ada"
    assert (await kv.get_with_metadata("k", "json" if False else "text")).value == "v"
    empty = await kv.get_with_metadata("missing")
    assert empty.value is None and empty.metadata is None


async def test_expiration_ttl_and_expiration_are_enforced(kv: KVNamespace, clock: FakeClock) -> None:
    await kv.put("ttl", "v", expirationTtl=60)
    await kv.put("ttl2", "v", {"expiration_ttl": 120})
    await kv.put("abs", "v", expiration=int(clock.now()) + 90)
    listed = await kv.list()
    assert {k["name"]: k.get("expiration") for k in listed["keys"]} == {
        "abs": int(clock.now()) + 90,
        "ttl": int(clock.now()) + 60,
        "ttl2": int(clock.now()) + 120,
    }
    clock.advance(61)
    assert await kv.get("ttl") is None and await kv.get("ttl2") == "v"
    assert [k.name for k in (await kv.list()).keys] == ["abs", "ttl2"]
    clock.advance(60)
    assert await kv.get("abs") is None and await kv.get("ttl2") is None
    assert (await kv.list()).keys == []


async def test_list_prefix_limit_cursor_in_byte_order(kv: KVNamespace) -> None:
    names = ["a", "b/1", "b/2", "b/3", "b/é", "b/z", "c"]
    for name in reversed(names):
        await kv.put(name, name, metadata={"name": name} if name == "b/2" else None)
    page = await kv.list(prefix="b/", limit=2)
    assert [k.name for k in page.keys] == ["b/1", "b/2"] and page.list_complete is False
    assert page.keys[1].metadata == {"name": "b/2"} and "metadata" not in page.keys[0]
    seen = [k.name for k in page.keys]
    while not page.list_complete:
        page = await kv.list({"prefix": "b/", "limit": 2, "cursor": page.cursor})
        seen += [k.name for k in page.keys]
    assert seen == ["b/1", "b/2", "b/3", "b/z", "b/é"]  # UTF-8 byte order: é (0xC3...) after z
    assert "cursor" not in page
    every = await kv.list()
    assert [k.name for k in every.keys] == ["a", "b/1", "b/2", "b/3", "b/z", "b/é", "c"] and every.list_complete


async def test_namespaces_are_separate_and_shared_across_processes(opener: Opener, clock: FakeClock) -> None:
    from stepstone.storage import binding_store

    one, two = binding_store(await opener()), binding_store(await opener())
    await KVNamespace(one, "ns-a", clock).put("k", "from a")
    assert await KVNamespace(two, "ns-a", clock).get("k") == "from a"  # another process, the same namespace
    assert await KVNamespace(two, "ns-b", clock).get("k") is None


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda kv: kv.get(""), TypeError, "Key name cannot be empty."),
        (lambda kv: kv.get("."), TypeError, '"." is not allowed as a key name.'),
        (lambda kv: kv.delete(".."), TypeError, '".." is not allowed as a key name.'),
        (lambda kv: kv.get(3), TypeError, "Failed to execute 'get' on 'KvNamespace': parameter 1 is not of type"),
        (
            lambda kv: kv.get("x" * 513),
            KVError,
            "KV GET failed: 414 UTF-8 encoded length of 513 exceeds key length limit of 512.",
        ),
        (
            lambda kv: kv.put("é" * 257, "v"),
            KVError,
            "KV PUT failed: 414 UTF-8 encoded length of 514 exceeds key length limit of 512.",
        ),
        (
            lambda kv: kv.get("k", "banana"),
            TypeError,
            'Unknown response type. Possible types are "text", "arrayBuffer", "json", and "stream".',
        ),
        (
            lambda kv: kv.get("k", cacheTtl=29),
            KVError,
            "KV GET failed: 400 Invalid cache_ttl of 29. Cache TTL must be at least 30.",
        ),
        (
            lambda kv: kv.put("k", "v", expirationTtl=59),
            KVError,
            "KV PUT failed: 400 Invalid expiration_ttl of 59. Expiration TTL must be at least 60.",
        ),
        (
            lambda kv: kv.put("k", "v", expiration_ttl=0),
            KVError,
            "KV PUT failed: 400 Invalid expiration_ttl of 0. Please specify integer greater than 0.",
        ),
        (
            lambda kv: kv.put("k", "v", expiration=1_700_000_030),
            KVError,
            "KV PUT failed: 400 Invalid expiration of 1700000030. Expiration times must be at least 60 seconds",
        ),
        (
            lambda kv: kv.put("k", {"a": 1}),
            TypeError,
            "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values.",
        ),
        (
            lambda kv: kv.put("k", "v", metadata={"m": "x" * 1100}),
            KVError,
            "KV PUT failed: 413 Metadata length of 1108 exceeds limit of 1024.",
        ),
        (
            lambda kv: kv.list(limit=1001),
            KVError,
            "KV GET failed: 400 Invalid key_count_limit of 1001. Please specify integer less than 1000.",
        ),
        (
            lambda kv: kv.list(limit=0),
            KVError,
            "KV GET failed: 400 Invalid key_count_limit of 0. Please specify an integer greater than 0.",
        ),
        (lambda kv: kv.get([]), KVError, "KV GET_BULK failed: 400 You must request a minimum of 1 key"),
    ],
)
async def test_cloudflare_errors(kv: KVNamespace, call, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as caught:
        await call(kv)
    assert str(caught.value).startswith(message)


async def test_value_over_25_mib_is_refused_and_25_mib_is_stored(kv: KVNamespace) -> None:
    limit = 25 * 1024 * 1024
    with pytest.raises(KVError, match=f"KV PUT failed: 413 Value length of {limit + 1} exceeds limit of {limit}."):
        await kv.put("big", b"x" * (limit + 1))
    await kv.put("big", b"x" * limit)
    assert len(await kv.get("big", "arrayBuffer")) == limit


async def test_bulk_get(kv: KVNamespace) -> None:
    await kv.put("a", '"A"')
    assert await kv.get(["a", "b"]) == {"a": '"A"', "b": None}
    assert await kv.get(["a"], "json") == {"a": "A"}
