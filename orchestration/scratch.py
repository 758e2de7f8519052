"""A Ray worker's scratch folder on its node's disk, where it keeps its local checkpoints (~250 MB each for a
ViT-S/16 with its Adam state). A killed worker cannot remove its own, so each folder is locked (FolderLock, an OS
lock that dies with its holder) for its worker's life, and every new worker removes the folders whose lock is free:
on a long-lived node, those of dead workers, never a live one's."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from mupvit.outputs import HOLDER_NAME, LOCK_NAME, FolderLock

PREFIX = "mupvit-worker-"


def remove_abandoned(root: Path) -> list[Path]:
    """Remove the scratch folders under `root` whose worker is dead; returns them. A folder counts only once its
    holder file exists, which its worker writes after taking the lock: one being created is left alone."""
    removed = []
    for folder in sorted(root.glob(f"{PREFIX}*")):
        if not (folder / HOLDER_NAME).is_file():
            continue
        lock = FileLock(folder / LOCK_NAME, timeout=0)
        try:
            with lock:  # free: its holder is dead (held while removing, so that two workers never race on it)
                shutil.rmtree(folder, ignore_errors=True)
        except (Timeout, OSError):  # alive, or another user's
            continue
        removed.append(folder)
    return removed


@contextmanager
def scratch_folder() -> Iterator[Path]:
    """A new scratch folder (in the system's temp dir), locked while in use and removed afterwards; the folders that
    dead workers left there are removed first."""
    root = Path(tempfile.gettempdir())
    if removed := remove_abandoned(root):
        print(f"mupvit: removed {len(removed)} scratch folder(s) that dead workers left in {root}", file=sys.stderr)
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    try:
        with FolderLock(folder, "a Ray worker's scratch folder"):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
