"""A node-local read-through cache of bucket objects (data.cache_dir, at most data.cache_max_gb).

An object is stored under its URL's hash, written to a temporary file and renamed into place, so a reader sees the
whole file or none: any number of loader workers and processes on the node may share one folder. Each write adds its
size to a ledger (`.size`) under a file lock; when the ledger passes the bound, the holder of the lock scans the
folder and deletes the least recently used files (a hit refreshes a file's mtime) until the cache is at 90% of it,
and sets the ledger to what it counted (which also corrects it after a crash). A file deleted while another
process reads it stays readable to that reader (POSIX); one deleted before it opens it is a miss. Entries are keyed
by URL only: clear the folder after replacing objects in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

from filelock import FileLock

LOW_WATER = 0.9  # eviction empties to this fraction of the bound, so it does not run at every write


class ReadThroughCache:
    def __init__(self, folder: str | os.PathLike, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder).expanduser(), int(max_bytes)
        self._lock: FileLock | None = None  # made in the process that uses it (not pickled to workers)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "max_bytes": self.max_bytes, "_lock": None}

    def entry(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.folder / digest[:2] / digest

    def get(self, url: str) -> bytes | None:
        path = self.entry(url)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except FileNotFoundError:
            pass  # evicted meanwhile; what we read is whole
        return data

    def put(self, url: str, data: bytes) -> None:
        path = self.entry(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: readers never see a partial file
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._account(len(data))

    def _account(self, added: int) -> None:
        if self._lock is None:
            self._lock = FileLock(self.folder / ".lock")
        ledger = self.folder / ".size"
        with self._lock:
            try:
                total = int(ledger.read_text() or 0) + added
            except (FileNotFoundError, ValueError):
                total = self.size()  # first write, or a damaged ledger: count what is there
            if total > self.max_bytes:
                total = self.evict(int(self.max_bytes * LOW_WATER))
            ledger.write_text(str(total))

    def _files(self) -> list[os.DirEntry]:
        found = []
        for sub in os.scandir(self.folder):
            if sub.is_dir() and len(sub.name) == 2:
                found.extend(e for e in os.scandir(sub.path) if not e.name.startswith(".tmp-"))
        return found

    def size(self) -> int:
        return sum(e.stat().st_size for e in self._files())

    def evict(self, target: int) -> int:
        """Delete the least recently used files until at most `target` bytes remain; returns the bytes kept. Also
        removes temporary files over an hour old (a writer that died mid-write)."""
        entries = []
        for e in self._files():
            try:
                entries.append((e.stat().st_mtime, e.stat().st_size, e.path))
            except FileNotFoundError:
                continue
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= target:
                break
            Path(path).unlink(missing_ok=True)
            total -= size
        stale = time.time() - 3600
        for sub in os.scandir(self.folder):
            if sub.is_dir():
                for e in os.scandir(sub.path):
                    with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
                        if e.name.startswith(".tmp-") and e.stat().st_mtime < stale:
                            Path(e.path).unlink(missing_ok=True)
        return total
