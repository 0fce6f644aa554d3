"""An R2 bucket as a directory: each object a file at its key's path, written atomically, keys kept inside.

Layout of a bucket directory::

    <bucket>/photos/cat.png                 the object "photos/cat.png", its bytes as they are
    <bucket>/.r2/meta/photos/cat.png.json   its etag, version, upload time and metadata
    <bucket>/.r2/tmp/                       bodies being written (renamed into place once complete)

A key maps to a path segment by segment (each percent-encoded where a file name could not hold it, an empty
segment as ``%``), so a key can never name a file outside the bucket: ``.`` and ``..`` segments, and keys under
the reserved ``.r2/``, are refused. Files copied into the directory by hand are objects too (their etag is
computed on first read). Writes go to a temporary file, are fsynced, then renamed over the target, metadata last;
a reader that finds metadata not matching the file (a crash between the two renames, a file replaced by hand)
recomputes it from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

RESERVED = ".r2"
MAX_KEY_BYTES = 1024


class KeyRefused(ValueError):
    """The key cannot name an object of a directory bucket."""


class KeyClash(ValueError):
    """An object and a folder of the same name (``a`` and ``a/b``): a directory cannot hold both."""

    def __init__(self, other: str) -> None:
        super().__init__(other)
        self.other = other


@dataclass(slots=True)
class StoredObject:
    """What is known of one object besides its bytes."""

    key: str
    size: int
    etag: str
    version: str
    uploaded: float
    http_metadata: dict[str, Any] = field(default_factory=dict)
    custom_metadata: dict[str, str] = field(default_factory=dict)


def _segment(part: str) -> str:
    if part == "":
        return "%"
    return quote(part, safe=" !$&'()+,;=@[]^`{}~-_.*")


def _unsegment(name: str) -> str:
    return "" if name == "%" else unquote(name)


def key_path(key: str) -> Path:
    """The relative path of ``key``'s file; raises :class:`KeyRefused`."""
    if len(key.encode("utf-8", errors="surrogatepass")) > MAX_KEY_BYTES or "\x00" in key:
        raise KeyRefused(key)
    parts = key.split("/")
    if any(p in (".", "..") for p in parts) or parts[0] == RESERVED:
        raise KeyRefused(key)
    return Path(*[_segment(p) for p in parts])


def path_key(relative: Path) -> str:
    """The key of a file at ``relative`` in the bucket."""
    return "/".join(_unsegment(p) for p in relative.parts)


class BucketDirectory:
    """The files of one bucket; blocking calls (the binding runs them on a thread).

    Args:
        root: the bucket's directory (created on first write).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._meta = root / RESERVED / "meta"
        self._tmp = root / RESERVED / "tmp"

    def _meta_path(self, rel: Path) -> Path:
        return self._meta / rel.parent / (rel.name + ".json")

    def read_meta(self, key: str) -> StoredObject | None:
        """The object's record, or None when there is no such object."""
        rel = key_path(key)
        path = self.root / rel
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        try:
            doc = json.loads(self._meta_path(rel).read_text(encoding="utf-8"))
            if doc.get("size") == st.st_size and doc.get("mtime_ns") == st.st_mtime_ns:
                return StoredObject(
                    key, st.st_size, doc["etag"], doc["version"], doc["uploaded"],
                    doc.get("http_metadata") or {}, doc.get("custom_metadata") or {},
                )  # fmt: skip
        except (OSError, ValueError, KeyError):
            pass
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        return StoredObject(key, st.st_size, digest, uuid.uuid5(uuid.NAMESPACE_URL, digest).hex, st.st_mtime)

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """The object's bytes (or a range of them)."""
        with open(self.root / key_path(key), "rb") as f:
            f.seek(start)
            return f.read() if length is None else f.read(length)

    def write(self, obj: StoredObject, data: bytes) -> None:
        """Store ``data`` as ``obj.key`` atomically; raises :class:`KeyClash`."""
        rel = key_path(obj.key)
        target = self.root / rel
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._check_clash(rel)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise KeyClash(self._file_above(rel)) from None
        if target.is_dir():
            raise KeyClash(self._one_below(rel))
        tmp = self._tmp / uuid.uuid4().hex
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        st = target.stat()
        doc = {
            "key": obj.key, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "etag": obj.etag,
            "version": obj.version, "uploaded": obj.uploaded, "http_metadata": obj.http_metadata,
            "custom_metadata": obj.custom_metadata,
        }  # fmt: skip
        meta = self._meta_path(rel)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta_tmp = self._tmp / uuid.uuid4().hex
        meta_tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(meta_tmp, meta)

    def _check_clash(self, rel: Path) -> None:
        for depth in range(1, len(rel.parts)):
            above = self.root.joinpath(*rel.parts[:depth])
            if above.is_file():
                raise KeyClash(path_key(Path(*rel.parts[:depth])))

    def _file_above(self, rel: Path) -> str:
        for depth in range(1, len(rel.parts)):
            if self.root.joinpath(*rel.parts[:depth]).is_file():
                return path_key(Path(*rel.parts[:depth]))
        return path_key(rel.parent)

    def _one_below(self, rel: Path) -> str:
        for dirpath, _dirs, files in os.walk(self.root / rel):
            if files:
                return path_key(Path(dirpath, files[0]).relative_to(self.root))
        return path_key(rel) + "/"

    def delete(self, key: str) -> None:
        """Delete the object (nothing if missing), and the folders it leaves empty."""
        rel = key_path(key)
        for path, stop in ((self.root / rel, self.root), (self._meta_path(rel), self._meta)):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                path.unlink()
            parent = path.parent
            while parent != stop and stop in parent.parents:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, sorted by their UTF-8 bytes."""
        folder = prefix.rpartition("/")[0]
        try:
            start = self.root / key_path(folder) if folder else self.root
        except KeyRefused:
            return []
        found: list[str] = []
        if not start.is_dir():
            return []
        for dirpath, dirs, files in os.walk(start):
            here = Path(dirpath)
            if here == self.root:
                dirs[:] = [d for d in dirs if d != RESERVED]
            for name in files:
                key = path_key((here / name).relative_to(self.root))
                if key.startswith(prefix):
                    found.append(key)
        found.sort(key=lambda k: k.encode("utf-8", errors="surrogatepass"))
        return found
