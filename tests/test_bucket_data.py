"""data.root in a bucket: an S3-compatible server (moto's server mode) on 127.0.0.1, reached through the standard
AWS variables, holding a copy of a tiny local dataset put there by `python -m mupvit.data.upload`."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mupvit.config import config_from_dict
from mupvit.data import eval_loader, train_loader
from mupvit.data import storage as storage_module
from mupvit.data.cache import ReadThroughCache
from mupvit.data.check import main as check_main
from mupvit.data.datasets import DataError, load_split
from mupvit.data.manifest import main as manifest_main
from mupvit.data.manifest import manifest_url
from mupvit.data.storage import StorageUnavailable, filesystem, read_object
from mupvit.data.upload import main as upload_main
from mupvit.errors import ConfigError

from .helpers import MotoServer

BUCKET = "data"
CLASSES = ("n01", "n02")


def write_dataset(root: Path) -> None:
    """torchvision's ImageNet layout (which is also an imagefolder): 2 classes x 3 small JPEGs (one PNG) per split."""
    for split in ("train", "val"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(3):
                pixels = np.random.default_rng([c, i, len(split)]).integers(0, 255, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / (f"{i}.png" if i == 2 else f"{i}.JPEG"))
    torch.save(({name: (name,) for name in CLASSES}, [CLASSES[0]] * 3), root / "meta.bin")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = MotoServer()
    server.start()
    env = server.env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    storage_module._FILESYSTEMS.clear()  # none made before these variables
    try:
        local = tmp_path_factory.mktemp("local")
        write_dataset(local)
        filesystem("s3://").mkdir(BUCKET)
        assert upload_main([str(local), f"s3://{BUCKET}/inet"]) == 0
        yield SimpleNamespace(local=local, url=f"s3://{BUCKET}/inet", server=server, env=env)
    finally:
        server.stop()
        storage_module._FILESYSTEMS.clear()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def copy_to(bucket: SimpleNamespace, prefix: str, manifests: bool = True) -> str:
    """Another copy of the local data at s3://data/<prefix>, with or without manifests."""
    url = f"s3://{BUCKET}/{prefix}"
    if manifests:
        assert upload_main([str(bucket.local), url]) == 0
    else:
        filesystem(url).put(str(bucket.local) + "/", url, recursive=True)
    return url


def relative(split) -> list[tuple[str, int]]:
    return [(p.replace("\\", "/").split(f"/{split.name}/", 1)[1], y) for p, y in split.samples]


def tiny_config(root: str, **data) -> object:
    return config_from_dict({
        "data": {"dataset": "imagefolder", "root": root, "image_size": 16, "eval_resize": 16,
                 "crop_area": [0.5, 1.0], "num_workers": 0, "eval_batch_size": 4, **data},
        "model": {"variant": None, "width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "patch_size": 4,
                  "num_classes": 2},
        "optim": {"warmup_steps": 1},
        "train": {"total_steps": 4, "epochs": None, "batch_size": 4, "eval_at_epochs": []},
    })


@pytest.mark.parametrize("layout", ["imagefolder", "imagenet"])
def test_bucket_splits_and_batches_are_the_local_ones(bucket, layout, tmp_path):
    """Same classes, same files in the same order, same labels; the loaders (2 forked workers, which make their own
    S3 clients, reading through the node cache) give bit-identical batches."""
    for name in ("train", "val"):
        remote, local = load_split(layout, bucket.url, name), load_split(layout, bucket.local, name)
        assert remote.classes == local.classes == list(CLASSES)
        assert relative(remote) == relative(local) and len(remote) == 6
        assert all(p.startswith(f"{bucket.url}/{name}/") for p, _ in remote.samples)
    cache = tmp_path / "cache"
    remote_cfg = tiny_config(bucket.url, num_workers=2, cache_dir=str(cache), dataset=layout)
    local_cfg = tiny_config(str(bucket.local), dataset=layout)
    remote, local = load_split(layout, bucket.url, "train"), load_split(layout, bucket.local, "train")
    for a, b in zip(train_loader(remote_cfg, remote, 0, 3), train_loader(local_cfg, local, 0, 3), strict=True):
        assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    for (xa, ya), (xb, yb) in zip(eval_loader(remote_cfg, remote), eval_loader(local_cfg, local), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list(cache.glob("??/*"))) == 6  # every train image read once from the bucket, then from the cache


def test_manifest_written_once_and_reused_until_rebuilt(bucket, capsys):
    url = copy_to(bucket, "fresh", manifests=False)
    fs = filesystem(url)
    assert not fs.exists(manifest_url(url, "train"))
    first = load_split("imagefolder", url, "train")
    assert "listing s3://data/fresh/train once" in capsys.readouterr().out
    written = fs.cat_file(manifest_url(url, "train"))
    assert json.loads(gzip.decompress(written))["count"] == 6
    # An object added after the manifest: a start that listed the bucket would see it; one that reads the
    # manifest does not (and does not rewrite it).
    fs.pipe_file(f"{url}/train/n01/9.JPEG", (bucket.local / "train/n01/0.JPEG").read_bytes())
    again = load_split("imagefolder", url, "train")
    assert "listing" not in capsys.readouterr().out
    assert again.samples == first.samples and fs.cat_file(manifest_url(url, "train")) == written
    assert manifest_main([url, "--splits", "train"]) == 0
    assert len(load_split("imagefolder", url, "train")) == 7
    # a damaged manifest is named, with the command that rebuilds it
    fs.pipe_file(manifest_url(url, "train"), b"not gzip")
    with pytest.raises(DataError, match=r"manifest s3://data/fresh/train.manifest.json.gz is damaged .*"
                                        r"python -m mupvit.data.manifest s3://data/fresh --splits train"):
        load_split("imagefolder", url, "train")


def test_object_gone_after_the_manifest(bucket, capsys):
    """A listed object deleted afterwards: the run's error names its URL, the manifest and the rebuild command;
    with on_bad_image skip it is passed over and counted; mupvit.data.check lists it as bad."""
    url = copy_to(bucket, "gone")
    split = load_split("imagefolder", url, "train")
    filesystem(url).rm_file(f"{url}/train/n02/1.JPEG")
    cfg = tiny_config(url)
    with pytest.raises(DataError) as failed:
        list(train_loader(cfg, split, 0, 3))
    message = str(failed.value)
    assert message.startswith(f"cannot read {url}/train/n02/1.JPEG: no such object")
    assert f"listed in {url}/train.manifest.json.gz" in message
    assert f"python -m mupvit.data.manifest {url} --splits train" in message
    skipped = sum(int(b.skipped.sum()) for b in train_loader(tiny_config(url, on_bad_image="skip"), split, 0, 3))
    assert skipped == 2  # 12 positions: two passes over 6 images, the gone one met once in each
    capsys.readouterr()
    assert check_main([url, "--splits", "train", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert f"bad: cannot read {url}/train/n02/1.JPEG: no such object" in out
    assert "6 images (train 6): 5 good, 0 decoded" not in out and "5 good, 1 bad" in out


def test_check_takes_a_url(bucket, capsys):
    assert check_main([bucket.url, "--layout", "imagenet", "--workers", "2"]) == 0
    assert "12 images (train 6, val 6): 12 good, 0 bad" in capsys.readouterr().out
    assert check_main(["s3://data/nothing-here", "--workers", "1"]) == 2
    assert "split folder not found: s3://data/nothing-here/train" in capsys.readouterr().err


def test_upload_resumes_and_names_a_bad_target(bucket, capsys):
    assert upload_main([str(bucket.local), bucket.url]) == 0  # the fixture's upload, again: nothing to send
    out = capsys.readouterr().out
    assert "13 files under" in out and "13 already in s3://data/inet, 0 to upload" in out
    assert "wrote s3://data/inet/train.manifest.json.gz: 6 objects" in out
    assert upload_main([str(bucket.local), "/not/a/url"]) == 2
    assert "is not a URL" in capsys.readouterr().err


@pytest.mark.parametrize(("root", "expected"), [
    ("xyz://bucket/data", "data.root: xyz://bucket/data: unknown URL scheme 'xyz'"),
    ("gs://bucket/data", "data.root: gs://bucket/data: reading gs:// needs the package gcsfs (pip install gcsfs)"),
])
def test_a_root_no_filesystem_serves_fails_in_validate(root, expected):
    if root.startswith("gs:") and importlib.util.find_spec("gcsfs"):
        pytest.skip("gcsfs is installed here: gs:// is served")
    with pytest.raises(ConfigError) as failed:
        tiny_config(root)
    assert str(failed.value).startswith(expected) and "\n" not in str(failed.value)


def _fill(folder: str, worker: int, count: int) -> None:
    cache = ReadThroughCache(folder, 4000)
    for i in range(count):
        url = f"s3://b/{worker}/{i}"
        cache.put(url, hashlib.sha256(url.encode()).digest() * 16)  # 512 bytes, derived from the URL
        for j in range(i + 1):  # every entry read back is whole and its own
            other = f"s3://b/{(worker + j) % 3}/{j}"
            got = cache.get(other)
            assert got is None or got == hashlib.sha256(other.encode()).digest() * 16


def test_cache_is_bounded_and_shared_by_processes(tmp_path):
    folder = str(tmp_path / "cache")
    procs = [multiprocessing.get_context("fork").Process(target=_fill, args=(folder, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    cache = ReadThroughCache(folder, 4000)
    kept = cache.size()
    assert 0 < kept <= 4000 and int((tmp_path / "cache/.size").read_text()) == kept
    assert not list((tmp_path / "cache").glob("*/.tmp-*"))  # no partial file left behind


def test_reads_retry_through_an_outage_then_name_the_object(bucket, monkeypatch):
    url = f"{bucket.url}/train/n01/0.JPEG"
    expected = (bucket.local / "train/n01/0.JPEG").read_bytes()
    split = load_split("imagefolder", bucket.url, "train")
    bucket.server.stop()
    try:
        threading.Timer(1.0, bucket.server.start).start()  # back within the retries (0.5 + 1 + 2 s)
        started = time.monotonic()
        assert read_object(url) == expected
        assert time.monotonic() - started > 0.9
        bucket.server.stop()
        monkeypatch.setattr(storage_module, "READ_DELAYS", (0.05, 0.05))
        with pytest.raises(StorageUnavailable, match=rf"cannot read {url} after 3 tries over 0.1 s: "
                                                     r"EndpointConnectionError"):
            read_object(url)
        with pytest.raises(StorageUnavailable):  # an outage is not a bad image: skip does not pass over it
            list(train_loader(tiny_config(bucket.url, on_bad_image="skip"), split, 0, 1))
    finally:
        time.sleep(1.1)  # the timer's start, if it has not run yet
        bucket.server.start()
