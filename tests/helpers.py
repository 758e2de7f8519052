"""Small shared builders for the tests."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mupvit.config import Config, config_from_dict, with_overrides
from mupvit.logger import RunLogger

if TYPE_CHECKING:
    from orchestration.launch_config import Launch
    from orchestration.local_head import Head


class QuietLogger(RunLogger):
    """Records what the loop reports instead of printing it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.events.append(("metrics", (step, values)))

    def checkpoint(self, step: int, path: str) -> None:
        self.events.append(("checkpoint", (step, path)))


@contextmanager
def gloo_rank(rank: int, world: int, port: int) -> Iterator[None]:
    """This spawned process as rank `rank` of a gloo group of `world` on 127.0.0.1:`port`, with one torch thread."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        yield
        # Neither rank tears the group down while another still uses it: rank 1 destroying its group while rank 0
        # was still saving aborted once ("terminate called without an active exception", SIGABRT).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def two_rank_worker(rank: int, port: int, config: str, out: str) -> None:
    """One of two spawned `mupvit.train` ranks (gloo, one thread) of the experiment file `config`; rank 0 saves
    the final parameters as OUT/final.pt."""
    import torch

    from mupvit.config import load_config
    from mupvit.train import run

    with gloo_rank(rank, 2, port):
        summary = run(load_config(Path(config), ["train.devices=2", f"train.out_dir={Path(out) / 'run'}"]),
                      QuietLogger())
        if rank == 0:
            torch.save(torch.load(summary["checkpoint"], weights_only=True)["model"], Path(out) / "final.pt")


def tiny_experiment(digits_root: Path, out_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A seconds-long run on the digits demo as an experiment file's mapping: 16x16 input, one block, 8 steps of
    batch 32; `overrides` (dotted keys) may set the launcher's sections too. Validated as orchestration reads it."""
    from orchestration.launch_config import launch_from_dict

    data = {
        "data": {"dataset": "digits", "root": str(digits_root), "image_size": 16, "eval_resize": 16,
                 "crop_area": [0.5, 1.0], "flip": False, "num_workers": 0, "eval_batch_size": 400},
        "model": {"variant": None, "width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "patch_size": 4,
                  "num_classes": 10},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"total_steps": 8, "epochs": None, "batch_size": 32, "log_every": 2, "eval_every": 4,
                  "eval_at_epochs": [], "ckpt_every": 4, "keep_ckpts": 3, "out_dir": str(out_dir)},
    }
    tree = with_overrides(data, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    launch_from_dict(tree)
    return tree


def tiny_launch(digits_root: Path, out_dir: Path, **overrides: Any) -> Launch:
    """The run of `tiny_experiment` and its launch, resolved as orchestration.train resolves them."""
    from orchestration.launch_config import launch_from_dict

    return launch_from_dict(tiny_experiment(digits_root, out_dir, **overrides), source="tiny.yaml")


def tiny_config(digits_root: Path, out_dir: Path, **overrides: Any) -> Config:
    """The run of `tiny_experiment` (its launcher sections left out)."""
    return config_from_dict(tiny_experiment(digits_root, out_dir, **overrides))


class MotoServer:
    """moto's S3 server on host:port (127.0.0.1 unless a second host must reach it); stop and start keep its
    objects (they live in this process)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        from orchestration.ports import free_port

        self.host, self.port = host, free_port(host)
        self.running = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The standard AWS variables that reach it."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if not self.running:
            self.server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            self.server.start()
            self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False


def worker_port_bases() -> tuple[int, ...]:
    """This pytest-xdist worker's share of the Ray port-block bases (all of them without xdist): heads that parallel
    workers start at the same moment never pick the same block before either has bound it."""
    from orchestration.ports import PORT_BLOCK_BASES

    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return PORT_BLOCK_BASES[index::count]


def listeners(pids: list[int]) -> set[tuple[IPv4Address | IPv6Address, int]]:
    """(address, port) of every TCP socket these processes listen on, from their fds and the TCP tables of their own
    network namespace (/proc/<pid>/net/tcp{,6}: a process of host B, tests/second_host.py, lists host B's)."""
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            listening = listening_sockets(pid)
        except OSError:  # gone
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (inode := re.fullmatch(r"socket:\[(\d+)\]", target)) and inode[1] in listening:
                found.add(listening[inode[1]])
    return found


def listening_sockets(pid: int) -> dict[str, tuple[IPv4Address | IPv6Address, int]]:
    """socket inode -> (address, port) of every listening TCP socket in `pid`'s network namespace."""
    listening = {}
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                host, port = fields[1].rsplit(":", 1)
                # the kernel prints each 32-bit word of the address in host (little-endian) order
                raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
                listening[fields[9]] = (ip_address(raw), int(port, 16))
    return listening


def freeze(head: Head, name: str, sqlite_store: Path | None = None) -> None:
    """SIGSTOP the head's processes named `name` (`ray::ImplicitFunc` for Tune trials, `ray::RayTrainWorker` for
    Ray Train's workers): work signalled mid-run then cannot finish before the driver's stop reaches it, however
    loaded the machine; the stop kills them (Ray's kill is a SIGKILL once a frozen process does not answer).
    With `sqlite_store` (the MLflow store they log to), at a moment none of them holds a lock on it: one frozen
    mid-write (or mid-read) would hold it for good, and the driver's stop could not mark its runs KILLED ("database
    is locked")."""
    deadline = time.monotonic() + 60
    while True:
        frozen = []
        for pid in head.processes():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(name.encode()):
                    os.kill(pid, signal.SIGSTOP)
                    frozen.append(pid)
            except OSError:  # it ended meanwhile
                continue
        if sqlite_store is None or not sqlite_locked(sqlite_store):
            return
        for pid in frozen:  # let the writer finish, and try again
            with suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        assert time.monotonic() < deadline, f"{sqlite_store} stayed locked for 60 s"
        time.sleep(0.01)


def sqlite_locked(path: Path) -> bool:
    """Whether another connection holds a lock on the SQLite database now that would keep a writer from committing
    (a reader's too: asked with BEGIN EXCLUSIVE, without waiting; no file, no lock: connecting would create one)."""
    if not path.exists():
        return False
    connection = sqlite3.connect(path, timeout=0)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        connection.rollback()
        return False
    except sqlite3.OperationalError:  # "database is locked"
        return True
    finally:
        connection.close()


@contextmanager
def ended_at_exit(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """`process` (a session leader: start_new_session=True), SIGKILLed with its whole group if it still runs when the
    block ends, however it ends."""
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cmdline(pid: int) -> str:
    """A process's command line, words joined by spaces ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def loopback(address: IPv4Address | IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as Ray's gRPC servers show it
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def real_json(val_samples: list[tuple[str, int]], path: Path) -> list[list[int]]:
    """A real.json for a digits val split (samples in split order): entries in file-name order; every 5th image
    has no label, every 3rd another correct label besides its own. Returns the label sets in split order."""
    by_name = {Path(p).name: label for p, label in val_samples}
    entries = []
    for i, name in enumerate(sorted(by_name)):
        label = by_name[name]
        entries.append([] if i % 5 == 0 else [label, (label + 1) % 10] if i % 3 == 0 else [label])
    path.write_text(json.dumps(entries))
    order = {name: i for i, name in enumerate(sorted(by_name))}
    return [entries[order[Path(p).name]] for p, _ in val_samples]


def damaged_npz(path: Path, compression: int, old: bytes, new: bytes) -> None:
    """A real .npz whose first member's .npy header has `old` replaced by `new` (same length), inside an intact zip
    (right CRCs), so that numpy's header parser, not zipfile, meets the damage."""
    buf = io.BytesIO()
    np.savez(buf, w=np.arange(10, dtype=np.float32), b=np.ones(3, np.float32))
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", compression) as out:
        for name in src.namelist():
            data = src.read(name)
            if name == "w.npy":
                assert old in data and len(old) == len(new)
                data = data.replace(old, new, 1)
            out.writestr(name, data)


def corrupt_jpeg(path: Path, size: tuple[int, int] = (12, 10)) -> Path:
    """A real JPEG with 497 extraneous bytes before its end marker, as some ImageNet files have: libjpeg-turbo
    refuses it ("Corrupt JPEG data: 496 extraneous bytes before marker 0xd9"), Pillow decodes it."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[:-2] + b"\x00" * 497 + data[-2:])
    return path
