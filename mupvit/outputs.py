"""Where finished work goes must be usable before work starts: `check_writable` probes a folder (create, write,
remove a file) so an unwritable out_dir fails in seconds, not after hours of training, and `check_output_file` the
file a command writes at its end (a summary, an export). `FolderLock` keeps a second process off a folder that one
is already writing (an OS lock, so it dies with its holder and a rerun after a crash takes over) and leaves nothing
behind: its lock files go, and so do the folders it made when they are still empty."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from mupvit.errors import ConfigError

LOCK_NAME = ".mupvit.lock"
HOLDER_NAME = ".mupvit.lock.holder"


def check_writable(folder: Path, what: str, nothing_done: str = "nothing was started") -> None:
    """Create `folder` if needed and write and remove a probe file there; a ConfigError naming `what` (and
    `nothing_done`) if not. Folders it had to create are removed again: a failed request leaves nothing behind."""
    probe = folder / f".write-probe-{os.getpid()}"
    created = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{what}: cannot write to {folder} ({err.strerror or err}); choose a writable folder, "
                          f"{nothing_done}") from None
    finally:
        remove_empty(created)


def check_output_file(path: Path, what: str) -> None:
    """The file a command writes once its work is done must be writable before the work starts: not a directory,
    in a writable folder (check_writable), and, where it exists, writable itself (opened to append, which changes
    nothing: an immutable or read-only file fails here)."""
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory; name a file to write, nothing was started")
    check_writable(path.parent, what)
    if path.exists():
        try:
            with path.open("ab"):
                pass
        except OSError as err:
            raise ConfigError(f"{what}: cannot write to {path} ({err.strerror or err}); choose a writable file, "
                              "nothing was started") from None


def missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, deepest first."""
    return [p for p in (folder, *folder.parents) if not p.exists()]


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty: what a request made and left unused."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            break


def holder_info() -> dict[str, Any]:
    """Who takes a lock: this process (pid, host, command, start time), as the next one is told."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def describe_holder(info: dict[str, Any]) -> str:
    """holder_info's record in words, for the message that refuses a second holder."""
    return f"pid {info['pid']} on {info['host']} since {info['started']} ({' '.join(info['command'])[:120]})"


class FolderLock:
    """An exclusive lock on `folder` for the life of a `with` block; a second holder is refused at once, with a
    message naming the first (pid, host, command, start time). On exit the lock files are removed, and so is the
    folder (and its parents) when the lock made it and nothing was written there: a run that stops during setup
    leaves the disk as it found it."""

    def __init__(self, folder: Path, what: str) -> None:
        self.folder, self.what = folder, what
        self.lock = FileLock(folder / LOCK_NAME, timeout=0, fallback_to_soft=False)
        self.created: list[Path] = []

    def holder(self) -> str:
        try:
            return describe_holder(json.loads((self.folder / HOLDER_NAME).read_text()))
        except (OSError, ValueError, KeyError):
            return "another process"

    def __enter__(self) -> FolderLock:
        self.created = missing_folders(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise ConfigError(f"{self.what}: {self.folder} is in use by {self.holder()}; wait for it to finish, or "
                              "choose another folder") from None
        (self.folder / HOLDER_NAME).write_text(json.dumps(holder_info()))
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        (self.folder / HOLDER_NAME).unlink(missing_ok=True)
        # Unlinked while still held: a process that opened the old file just before finds it unlinked once it gets
        # the lock, and filelock (checking st_nlink) does not count that as held, so there are never two holders.
        (self.folder / LOCK_NAME).unlink(missing_ok=True)
        self.lock.release()
        remove_empty(self.created)
