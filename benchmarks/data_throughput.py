"""Images/s per CPU core of the training input pipeline on ImageNet-sized JPEGs (500x375, generated), side by side:

  decode_pillow    Pillow decode + RGB conversion (the decoder before data.decode existed)
  decode_accurate  libjpeg-turbo ISLOW IDCT (data.decode: accurate; Pillow's pixels)
  decode_tf_fast   libjpeg-turbo fast IDCT (data.decode: tf_fast, the default; TF's pixels)
  floor            tf_fast decode + resize to 224x224 (the least a faithful pipeline does)
  mupvit           tf_fast decode + TF Inception crop + flip + big_vision RandAugment(2, 10) + scale (our train
                   pipeline, default settings)
  mupvit_pillow    the same pipeline with Pillow's decode
  loader_side      what a worker does with data.augment_on: device: tf_fast decode + TF Inception crop to uint8 +
                   drawing the plan (flip and RandAugment left to the device)
  torchvision      Pillow decode + stock v2 RandomResizedCrop(224, scale=(0.05, 1)) + flip + RandAugment(2, 10)

Each runs in this one process with one torch thread (per-core figures), in alternating rounds; the reported
figure is the median round. `--workers N` also times our pipeline through the real DataLoader with N workers, and
both data.augment_on modes end to end at `--batch`: finished batches in this process, which with augment_on device
augments the batch itself (on the CPU), with one torch thread and with torch's default count (the trainer's).

Then the other half of data.augment_on: device, on this CPU: flip + RandAugment(2, 10) + scale of `--batch` uint8
crops of these JPEGs, as one batched call (mupvit/data/batched_augment.py) and image by image (the loader path's
ops), alternating rounds; the outputs are checked equal.

    python benchmarks/data_throughput.py [--images 64] [--rounds 5] [--workers 2] [--batch 256]

With `--root URL` (s3://bucket/prefix; endpoint and credentials from the AWS variables) or `--moto` (an S3 server
of moto's in this process, on 127.0.0.1), the same JPEGs also go into the bucket, and it times, side by side in
alternating rounds: a cold start's listing of `--objects` objects against reading their manifest, and our train
pipeline through the DataLoader (`--workers`, at least 1) from the bucket and from the local disk.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from mupvit.config import config_from_dict
from mupvit.data import device_augment, train_loader
from mupvit.data.batched_augment import augment_batch
from mupvit.data.datasets import Split
from mupvit.data.decode import decode_image, decode_with_pillow
from mupvit.data.randaugment import RandAugment
from mupvit.data.resize import to_uint8_truncating
from mupvit.data.stream import sample_rng
from mupvit.data.transforms import TrainTransform, to_unit_range

CPU = torch.device("cpu")


def write_jpegs(folder: Path, count: int) -> list[str]:
    """Photo-like 500x375 JPEGs: smooth colour gradients plus noise, quality 90."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    paths = []
    for i in range(count):
        base = np.stack([(xx * (i + 1) % 256), (yy * 2 + i) % 256, (xx + yy) // 4 % 256], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def pillow(path: str) -> torch.Tensor:
    return torch.from_numpy(decode_with_pillow(path).copy()).permute(2, 0, 1)


def train_transform() -> TrainTransform:
    return TrainTransform(224, (0.05, 1.0), (0.75, 1.33), crop="tf", randaugment=RandAugment(2, 10))


def pipelines() -> dict:
    ours = train_transform()
    stock = T.Compose([T.RandomResizedCrop(224, scale=(0.05, 1.0), antialias=True), T.RandomHorizontalFlip(),
                       T.RandAugment(num_ops=2, magnitude=10)])
    return {
        "decode_pillow": lambda path, i: pillow(path),
        "decode_accurate": lambda path, i: decode_image(path, "accurate"),
        "decode_tf_fast": lambda path, i: decode_image(path, "tf_fast"),
        "floor": lambda path, i: to_unit_range(to_uint8_truncating(TF.resize(decode_image(path).float(), [224, 224],
                                                                             antialias=False))),
        "mupvit": lambda path, i: ours(decode_image(path), sample_rng(0, i)),
        "mupvit_pillow": lambda path, i: ours(pillow(path), sample_rng(0, i)),
        "loader_side": lambda path, i: ours.crop_and_plan(decode_image(path), sample_rng(0, i)),
        "torchvision": lambda path, i: to_unit_range(stock(pillow(path))),
    }


def per_core_rate(fn, paths: list[str]) -> float:
    start = time.perf_counter()
    for i, path in enumerate(paths):
        fn(path, i)
    return len(paths) / (time.perf_counter() - start)


def loader_rate(paths: list[str], workers: int, batch: int = 32, steps: int = 8, augment_on: str = "loader",
                device: torch.device = CPU) -> float:
    """Finished [-1, 1] batches per second on `device`, as the trainer gets them: with augment_on device the
    workers crop and the batch is augmented on `device` (here in this process on the CPU)."""
    cfg = config_from_dict({"data": {"dataset": "imagefolder", "root": "/unused", "num_workers": workers,
                                     "augment_on": augment_on},
                            "train": {"total_steps": steps, "epochs": None, "batch_size": batch},
                            "optim": {"warmup_steps": 1}})
    split = Split("train", ["0"], [(p, 0) for p in paths])
    loader = iter(train_loader(cfg, split, 0, steps + 1, pin_memory=device.type == "cuda"))
    augment = device_augment(cfg)
    next(loader)  # start the workers
    start = time.perf_counter()
    for _ in range(steps):
        batch_ = next(loader)
        augment(batch_.image.to(device, non_blocking=True), batch_.plan)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def device_half_rates(paths: list[str], batch: int, rounds: int) -> dict[str, float]:
    """Images/s per core of flip + RandAugment + scale: one batched call vs image by image, on the same crops and
    draws (each sample's Generator as its crop left it)."""
    ours = train_transform()
    crops, rngs, plans = [], [], []
    for i in range(batch):
        rng = sample_rng(0, i)
        crops.append(ours.crop(decode_image(paths[i % len(paths)]), rng))
        rngs.append(copy.deepcopy(rng))  # where the crop left it: the per-image ops draw from here
        plans.append(ours.plan(rng))
    images, plans = torch.stack(crops), torch.stack(plans)

    def per_image(fresh: list[np.random.Generator]) -> torch.Tensor:
        return torch.stack([ours.augment(crop, rng) for crop, rng in zip(crops, fresh, strict=True)])

    def batched(_: list[np.random.Generator]) -> torch.Tensor:
        return augment_batch(images, plans, ours.randaugment)

    if not torch.equal(per_image(copy.deepcopy(rngs)), batched(rngs)):
        raise AssertionError("the batched device half differs from the per-image ops")
    rates: dict[str, list[float]] = {"per_image": [], "batched": []}
    for r in range(rounds):
        for name, fn in (("per_image", per_image), ("batched", batched))[::1 if r % 2 == 0 else -1]:
            fresh = copy.deepcopy(rngs)
            start = time.perf_counter()
            fn(fresh)
            rates[name].append(batch / (time.perf_counter() - start))
    per_image_rate, batched_rate = statistics.median(rates["per_image"]), statistics.median(rates["batched"])
    return {f"device_half_per_image_images_per_s_per_core_batch_{batch}": per_image_rate,
            f"device_half_batched_images_per_s_per_core_batch_{batch}": batched_rate,
            "device_half_batched_over_per_image": batched_rate / per_image_rate}


def moto_root() -> str:
    """Start moto's S3 server on 127.0.0.1 (a free port) for this process, point the AWS variables at it, and
    return a bucket URL there."""
    import logging
    import os
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()  # a daemon thread
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    from mupvit.data.storage import filesystem

    filesystem("s3://").mkdir("bench")
    return "s3://bench/data"


def bucket_rates(root: str, paths: list[str], workers: int, rounds: int, objects: int,
                 steps: int = 8) -> dict[str, float]:
    """Cold start (list `objects` objects vs read their manifest) and loader images/s (bucket vs local disk)."""
    from mupvit.data.manifest import _read, list_split, write_manifest
    from mupvit.data.storage import filesystem, join

    fs = filesystem(root)
    listed = join(root, "listing")
    fs.pipe({join(listed, "train", f"c{i % 100:03d}", f"{i:07d}.jpg"): b"x" for i in range(objects)})
    write_manifest(listed, "train", list_split(listed, "train", progress=False))
    urls = [join(root, "images", Path(p).name) for p in paths]
    for path, url in zip(paths, urls, strict=True):
        fs.put_file(path, url)
    times: dict[str, list[float]] = {"list": [], "manifest": []}
    rates: dict[str, list[float]] = {"bucket": [], "local": []}
    for r in range(rounds):
        for name in ("list", "manifest")[::1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            names = list_split(listed, "train", progress=False) if name == "list" else _read(listed, "train")
            times[name].append(time.perf_counter() - start)
            assert len(names) == objects
        for name in ("bucket", "local")[::1 if r % 2 == 0 else -1]:
            rates[name].append(loader_rate((urls if name == "bucket" else paths) * 4, max(1, workers), steps=steps))
    t_list, t_manifest = statistics.median(times["list"]), statistics.median(times["manifest"])
    bucket, local = statistics.median(rates["bucket"]), statistics.median(rates["local"])
    return {f"cold_start_list_{objects}_objects_s": t_list, f"cold_start_manifest_{objects}_objects_s": t_manifest,
            "list_over_manifest": t_list / t_manifest,
            f"loader_bucket_images_per_s_{max(1, workers)}_workers": bucket,
            f"loader_local_images_per_s_{max(1, workers)}_workers": local, "bucket_over_local": bucket / local}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="also time our pipeline in a DataLoader")
    parser.add_argument("--batch", type=int, default=256, help="batch of the device-half comparison")
    parser.add_argument("--tiny", action="store_true", help="2 images, 1 round, batch 4 (the test suite's smoke run)")
    parser.add_argument("--root", help="a bucket URL to time reads from (s3://bucket/prefix)")
    parser.add_argument("--moto", action="store_true", help="time against moto's S3 server in this process")
    parser.add_argument("--objects", type=int, default=10000, help="objects listed in the cold-start comparison")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.rounds, args.batch, args.objects = 2, 1, 4, 20
    trainer_threads = torch.get_num_threads()  # what the training process would use
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images)
        fns = pipelines()
        for fn in fns.values():
            fn(paths[0], 0)  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(args.rounds):
            for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
                rates[name].append(per_core_rate(fns[name], paths))
        result = {f"{name}_images_per_s_per_core": statistics.median(v) for name, v in rates.items()}
        rate = {name: result[f"{name}_images_per_s_per_core"] for name in fns}
        result["tf_fast_over_pillow_decode"] = rate["decode_tf_fast"] / rate["decode_pillow"]
        result["mupvit_over_mupvit_pillow"] = rate["mupvit"] / rate["mupvit_pillow"]
        result["floor_over_mupvit"] = rate["floor"] / rate["mupvit"]
        result["mupvit_over_torchvision"] = rate["mupvit"] / rate["torchvision"]
        result["floor_over_loader_side"] = rate["floor"] / rate["loader_side"]
        result["loader_side_over_mupvit"] = rate["loader_side"] / rate["mupvit"]
        if args.workers:
            result[f"mupvit_loader_images_per_s_{args.workers}_workers"] = loader_rate(paths * 4, args.workers)
            # Both modes end to end at --batch, alternating rounds, this process with one thread and with the
            # trainer's thread count (the device half runs in the training process).
            ends: dict[tuple[str, int], list[float]] = {}
            for r in range(args.rounds):
                for threads in sorted({1, trainer_threads}):
                    torch.set_num_threads(threads)
                    for mode in ("loader", "device")[::1 if r % 2 == 0 else -1]:
                        rate = loader_rate(paths * 4, args.workers, args.batch, 4, mode)
                        ends.setdefault((mode, threads), []).append(rate)
            torch.set_num_threads(1)
            for (mode, threads), values in ends.items():
                where = f"{args.workers}_workers_batch_{args.batch}_{threads}_threads"
                result[f"augment_on_{mode}_images_per_s_{where}"] = statistics.median(values)
        result.update(device_half_rates(paths, args.batch, args.rounds))
        if args.root or args.moto:
            result.update(bucket_rates(args.root or moto_root(), paths, args.workers, args.rounds, args.objects,
                                       steps=2 if args.tiny else 8))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
