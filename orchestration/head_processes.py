"""Which processes belong to one local Ray head, read from /proc, and killing a set of processes until none is
left. A head's processes: those in its session (`ray start` leads one, and every daemon it spawns keeps it), those
whose command line names its temporary directory, and all of their descendants (workers, and the drivers of its
jobs, which Ray starts in sessions of their own)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of this user's live processes, read from /proc."""
    table = {}
    uid = os.getuid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
            if fields[0] in ("Z", "X"):  # a zombie is dead already: only its parent's wait() is left
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = (int(fields[1]), int(fields[3]), cmdline)
        except (OSError, ValueError, IndexError):  # it ended while being read
            continue
    return table


def head_processes(temp_dir: str, session_id: int) -> list[int]:
    """Ray's processes in the session `session_id`, processes whose command line names `temp_dir`, and all of
    their descendants."""
    table = _process_table()
    temp_dir = temp_dir.rstrip("/")

    def of_head(sid: int, cmdline: str) -> bool:
        names_temp_dir = f"{temp_dir}/" in cmdline or f"{temp_dir} " in f"{cmdline} "
        return names_temp_dir or (sid == session_id and "ray" in cmdline.lower())

    found = {pid for pid, (_, sid, cmdline) in table.items() if of_head(sid, cmdline)}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(found)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    me = os.getpid()
    while me > 1:  # never the caller, nor its ancestors (a job on one head may stop another head)
        found.discard(me)
        me = table.get(me, (0, 0, ""))[0]
    return sorted(found)


def kill_all(processes: Callable[[], list[int]], what: str, timeout_s: float = 30.0) -> None:
    """SIGKILL every pid of `processes()` until it lists none; asked again and again, since a process can spawn a
    child while the others are killed. RuntimeError naming `what` when some survive timeout_s."""
    deadline = time.monotonic() + timeout_s
    while pids := processes():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: processes {pids} survived SIGKILL for {timeout_s:g} s")
