"""Pre-scan a dataset before a run meets a bad file hours in:

    python -m mupvit.data.check /data/imagenet --layout imagenet --splits train val --workers 16

Decodes every image of the named splits with the run's decoder, in parallel, with a progress bar; prints the
counts and every file that cannot be decoded (or is above the pixel cap), and exits 1 when any is bad (0 when all
are good, 2 when the folder or a split is not there). JPEGs with corrupt data that libjpeg-turbo refuses but Pillow
recovers are listed and counted apart ("recovered:"): a run trains on them, with other pixels than TF's, and warns.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from multiprocessing import Pool

from tqdm import tqdm

from mupvit.data.datasets import DataError, load_splits
from mupvit.data.decode import MAX_PIXELS, decode_noting


def problem(path: str, method: str, max_pixels: int) -> tuple[str, str] | None:
    """("bad", why) for a file that cannot be used, ("recovered", why) for a JPEG only Pillow decodes, or None."""
    try:
        refused = decode_noting(path, method, max_pixels).recovered
    except DataError as err:
        return "bad", str(err)
    if refused:
        return "recovered", f"{path} (libjpeg-turbo: {refused}): decoded by the fallback decoder (Pillow)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.data.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the data root (data.root)")
    parser.add_argument("--layout", choices=["imagefolder", "imagenet"], default="imagefolder",
                        help="imagefolder: ROOT/<split>/<class>/*; imagenet: torchvision's ImageNet layout")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--decode", choices=["tf_fast", "accurate"], default="tf_fast")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    try:
        splits = load_splits(args.layout, args.root, args.splits)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = [path for split in splits.values() for path, _ in split.samples]
    check = functools.partial(problem, method=args.decode, max_pixels=args.max_pixels)
    with Pool(max(1, args.workers)) as pool:
        found = list(tqdm(pool.imap(check, paths, chunksize=64), total=len(paths), desc="checking images",
                          unit="img", file=sys.stderr))
    bad = [why for kind, why in filter(None, found) if kind == "bad"]
    recovered = [why for kind, why in filter(None, found) if kind == "recovered"]
    for why in recovered:
        print(f"recovered: {why}")
    for why in bad:
        print(f"bad: {why}")
    counts = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    fallback = f"{len(recovered)} decoded by the fallback decoder (corrupt JPEG data), " if recovered else ""
    print(f"{len(paths)} images ({counts}): {len(paths) - len(bad) - len(recovered)} good, {fallback}{len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
