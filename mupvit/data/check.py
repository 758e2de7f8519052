"""Pre-scan a dataset before a run meets a bad file hours in:

    python -m mupvit.data.check /data/imagenet --layout imagenet --splits train val --workers 16

Decodes every image of the named splits with the run's decoder, in parallel, with a progress bar; prints the
counts and every file that cannot be decoded (or is above the pixel cap), and exits 1 when any is bad (0 when all
are good, 2 when the folder or a split is not there).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from multiprocessing import Pool

from tqdm import tqdm

from mupvit.data.datasets import DataError, load_splits
from mupvit.data.decode import MAX_PIXELS, decode_image


def problem(path: str, method: str, max_pixels: int) -> str | None:
    """Why `path` cannot be used, or None."""
    try:
        decode_image(path, method, max_pixels)
    except DataError as err:
        return str(err)
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
    bad = [reason for reason in found if reason is not None]
    for reason in bad:
        print(f"bad: {reason}")
    counts = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    print(f"{len(paths)} images ({counts}): {len(paths) - len(bad)} good, {len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
