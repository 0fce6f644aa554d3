"""R2 on a directory: objects and bodies, metadata, etags, ranges, conditions, listing, atomic files, safe keys."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stepstone.bindings.errors import R2Error
from stepstone.bindings.r2 import R2Bucket, R2Object, R2ObjectBody
from stepstone.bindings.values import Blob, ReadableStream
from stepstone.testing import FakeClock


@pytest.fixture
def bucket(tmp_path: Path, clock: FakeClock) -> R2Bucket:
    return R2Bucket(tmp_path / "bucket", name="images", clock=clock)


async def test_put_get_head_delete(bucket: R2Bucket, clock: FakeClock) -> None:
    assert await bucket.get("a.txt") is None and await bucket.head("a.txt") is None
    put = await bucket.put(
        "a.txt", "hello", httpMetadata={"contentType": "text/plain"}, customMetadata={"owner": "ada"}
    )
    assert isinstance(put, R2Object)
    md5 = hashlib.md5(b"hello").hexdigest()
    assert (put.key, put.size, put.etag, put.httpEtag, put.http_etag) == ("a.txt", 5, md5, f'"{md5}"', f'"{md5}"')
    assert put.uploaded == datetime.fromtimestamp(clock.now(), UTC) and put.version
    got = await bucket.get("a.txt")
    assert isinstance(got, R2ObjectBody)
    assert got.httpMetadata == {"contentType": "text/plain"} and got.custom_metadata.owner == "ada"
    assert await got.text() == "hello" and got.bodyUsed
    with pytest.raises(TypeError, match="Body has already been used"):
        await got.text()
    assert await (await bucket.get("a.txt")).arrayBuffer() == b"hello"
    assert await (await bucket.get("a.txt")).bytes() == b"hello"
    blob = await (await bucket.get("a.txt")).blob()
    assert blob.content_type == "text/plain" and await blob.bytes() == b"hello"
    head = await bucket.head("a.txt")
    assert head is not None and head.etag == md5 and head.version == put.version
    headers: dict[str, str] = {}
    head.writeHttpMetadata(headers)
    assert headers == {"content-type": "text/plain"}
    await bucket.delete("a.txt")
    await bucket.delete(["a.txt", "never"])
    assert await bucket.head("a.txt") is None


async def test_bodies_of_every_kind_and_json(bucket: R2Bucket) -> None:
    await bucket.put("b", b"\x89PNG\x00")
    await bucket.put("s", ReadableStream([b"ab", b"cd"]))
    await bucket.put("blob", Blob(b"xyz", "text/plain"))
    await bucket.put("j", '{"a": [1]}')
    await bucket.put("empty", None)
    assert await (await bucket.get("b")).bytes() == b"\x89PNG\x00"
    assert await (await bucket.get("s")).text() == "abcd"
    assert await (await bucket.get("blob")).text() == "xyz"
    assert (await (await bucket.get("j")).json()).a == [1]
    assert (await bucket.head("empty")).size == 0
    body = (await bucket.get("s")).body
    assert b"".join([chunk async for chunk in body]) == b"abcd"


async def test_the_files_are_the_objects(bucket: R2Bucket) -> None:
    await bucket.put("photos/2026/cat.png", b"meow")
    assert (bucket.root / "photos" / "2026" / "cat.png").read_bytes() == b"meow"
    assert not list((bucket.root / ".r2" / "tmp").iterdir())  # temp files renamed into place
    (bucket.root / "dropped.txt").write_bytes(b"by hand")  # a file copied in is an object
    head = await bucket.head("dropped.txt")
    assert head is not None and head.etag == hashlib.md5(b"by hand").hexdigest()
    (bucket.root / "photos" / "2026" / "cat.png").write_bytes(b"replaced")  # metadata no longer matches
    assert (await bucket.head("photos/2026/cat.png")).etag == hashlib.md5(b"replaced").hexdigest()
    await bucket.delete("photos/2026/cat.png")
    assert not (bucket.root / "photos").exists()  # emptied folders go


async def test_list_prefix_delimiter_cursor(bucket: R2Bucket) -> None:
    for key in ["a/1", "a/2", "a/b/3", "c", "d/4", "é"]:
        await bucket.put(key, key, customMetadata={"k": key})
    every = await bucket.list()
    assert [o.key for o in every.objects] == ["a/1", "a/2", "a/b/3", "c", "d/4", "é"]
    assert every.truncated is False and "cursor" not in every and every.objects[0].customMetadata == {}
    top = await bucket.list(delimiter="/")
    assert [o.key for o in top.objects] == ["c", "é"] and top.delimitedPrefixes == ["a/", "d/"]
    sub = await bucket.list(prefix="a/", delimiter="/", include=["customMetadata"])
    assert [o.key for o in sub.objects] == ["a/1", "a/2"] and sub.delimitedPrefixes == ["a/b/"]
    assert sub.objects[0].customMetadata == {"k": "a/1"}
    seen: list[str] = []
    page = await bucket.list(limit=2)
    seen += [o.key for o in page.objects]
    while page.truncated:
        page = await bucket.list(limit=2, cursor=page.cursor)
        seen += [o.key for o in page.objects]
    assert seen == ["a/1", "a/2", "a/b/3", "c", "d/4", "é"]
    assert [o.key for o in (await bucket.list(startAfter="c")).objects] == ["d/4", "é"]


async def test_ranges_and_conditions(bucket: R2Bucket) -> None:
    put = await bucket.put("r", b"0123456789")
    part = await bucket.get("r", range={"offset": 2, "length": 3})
    assert await part.bytes() == b"234" and part.range == {"offset": 2, "length": 3} and part.size == 10
    assert await (await bucket.get("r", {"range": {"suffix": 4}})).bytes() == b"6789"
    no_body = await bucket.get("r", onlyIf={"etagMatches": "nope"})
    assert type(no_body) is R2Object
    assert isinstance(await bucket.get("r", only_if={"etag_matches": put.etag}), R2ObjectBody)
    assert await bucket.put("r", b"new", onlyIf={"etagMatches": "stale"}) is None
    assert await (await bucket.get("r")).bytes() == b"0123456789"


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "./x", "a/./b", ".r2/meta/x", "x" * 1025])
async def test_keys_cannot_escape_the_bucket(bucket: R2Bucket, tmp_path: Path, key: str) -> None:
    for method, call in (
        ("put", bucket.put(key, b"x")),
        ("get", bucket.get(key)),
        ("head", bucket.head(key)),
        ("delete", bucket.delete(key)),
    ):
        with pytest.raises(R2Error, match=rf"^{method}: The specified object name is not valid. \(10020\)$"):
            await call
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket"] or not (tmp_path / "escape").exists()
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b").exists()


async def test_odd_keys_round_trip(bucket: R2Bucket) -> None:
    keys = ["folder/", "a//b", "100%", "sp ace?&#", "ü/ñ", "%"]
    for key in keys:
        await bucket.put(key, key)
    assert sorted(o.key for o in (await bucket.list()).objects) == sorted(keys, key=lambda k: k.encode())
    for key in keys:
        assert await (await bucket.get(key)).text() == key
    assert all(os.sep not in p.name for p in bucket.root.rglob("*"))


async def test_bad_input_errors(bucket: R2Bucket) -> None:
    await bucket.put("file", b"x")
    with pytest.raises(R2Error, match=r"^put: The specified object name is not valid: 'file/child' and 'file'"):
        await bucket.put("file/child", b"y")
    with pytest.raises(TypeError, match="parameter 2 is not of type"):
        await bucket.put("k", {"a": 1})
    with pytest.raises(R2Error, match=r"put: The Content-MD5 you specified did not match what we received. \(10037\)"):
        await bucket.put("k", b"x", md5="00" * 16)
    with pytest.raises(
        R2Error, match=r"put: Your metadata headers exceed the maximum allowed metadata size. \(10012\)"
    ):
        await bucket.put("k", b"x", customMetadata={"a": "x" * 3000})
    with pytest.raises(R2Error, match=r"list: MaxKeys params must be positive integer <= 1000. \(10022\)"):
        await bucket.list(limit=1001)
    with pytest.raises(TypeError, match="unknown field 'colour'"):
        await bucket.put("k", b"x", httpMetadata={"colour": "red"})
