"""The listing of a split in a bucket, made once and stored beside the data, so that a start reads one object instead
of listing 1.28M:

    python -m mupvit.data.manifest s3://bucket/imagenet --splits train val     # (re)build after the data changed

`<root>/<split>.manifest.json.gz` holds every object under `<root>/<split>/` (paths relative to it, sorted) and when
it was listed. A start with a URL data root reads it; a missing one is listed (with a progress bar) and written,
or, where the bucket is not writable, used from memory with a warning (every start then lists again).

Staleness rule (cheap: no listing at start): the manifest is trusted. An object it lists that is gone when read is a
bad image (data.on_bad_image applies) whose message names the manifest and the command above; objects added after it
was written are not seen until it is rebuilt. `python -m mupvit.data.upload` writes the manifests itself.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from mupvit.data.datasets import DataError
from mupvit.data.storage import StorageUnavailable, cause, filesystem, join, read_if_present

FORMAT = "mupvit-manifest/1"
SUFFIX = ".manifest.json.gz"
_HINTS: dict[str, str] = {}  # split folder URL -> what to say when an object it lists is gone (inherited on fork)


def manifest_url(root: str, split: str) -> str:
    return join(root, split + SUFFIX)


def rebuild_command(root: str, split: str) -> str:
    return f"python -m mupvit.data.manifest {root} --splits {split}"


def hint_for(url: str) -> str:
    """What to add to a 'no such object' error for `url`: the manifest that listed it and how to rebuild it."""
    for folder, hint in _HINTS.items():
        if url.startswith(folder):
            return hint
    return ""


def _register(root: str, split: str) -> None:
    _HINTS[join(root, split) + "/"] = (
        f"; it is listed in {manifest_url(root, split)}, so the data changed after the manifest was written: "
        f"rebuild it with `{rebuild_command(root, split)}`")


def list_split(root: str, split: str, progress: bool = True) -> list[str]:
    """Every object under root/split/, relative to it, sorted: one listing per top-level folder, in threads, with a
    progress bar over the folders."""
    fs, folder = filesystem(root), join(root, split)
    try:
        top = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return []
    except Exception as err:
        raise StorageUnavailable(f"cannot list {folder}: {cause(err)}") from err
    base = fs._strip_protocol(folder).rstrip("/") + "/"
    names = [fs._strip_protocol(e["name"])[len(base):] for e in top if e["type"] != "directory"]
    folders = [e["name"] for e in top if e["type"] == "directory"]
    with ThreadPoolExecutor(8) as pool, tqdm(total=len(folders), desc=f"listing {folder} (no manifest yet)",
                                            unit="folder", file=sys.stderr, disable=not progress) as bar:
        for found in pool.map(lambda f: fs.find(f, withdirs=False), folders):
            names.extend(fs._strip_protocol(p)[len(base):] for p in found)
            bar.update()
    return sorted(names)


def write_manifest(root: str, split: str, names: list[str]) -> str:
    """Write root/<split>.manifest.json.gz; returns its URL (raises OSError when the bucket refuses the write)."""
    url = manifest_url(root, split)
    body = {"format": FORMAT, "split": split, "listed_at": datetime.datetime.now(datetime.UTC).isoformat(),
            "count": len(names), "files": names}
    filesystem(url).pipe_file(url, gzip.compress(json.dumps(body).encode(), compresslevel=6))
    return url


def _read(root: str, split: str) -> list[str] | None:
    url = manifest_url(root, split)
    if (data := read_if_present(url)) is None:
        return None
    try:
        body = json.loads(gzip.decompress(data))
        if body.get("format") != FORMAT or body.get("count") != len(body["files"]):
            raise ValueError(f"format {body.get('format')!r}, expected {FORMAT!r}")
        return list(body["files"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"manifest {url} is damaged ({cause(err)}); rebuild it with "
                        f"`{rebuild_command(root, split)}`") from err


def read_meta(root: str) -> bool:
    """Whether root/meta.bin (torchvision's ImageNet devkit metadata) is there and loads as torchvision loads it."""
    import io

    import torch

    url = join(root, "meta.bin")
    if (data := read_if_present(url)) is None:
        return False
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as err:
        raise DataError(f"{url} is not torchvision's ImageNet meta.bin ({cause(err)})") from err
    return True


def _say(line: str) -> None:
    print(line, flush=True)


def split_listing(root: str, split: str, warn: Callable[[str], None] = _say) -> list[str]:
    """The split's objects: from its manifest, or listed (and the manifest written) when it has none."""
    names = _read(root, split)
    if names is None:
        warn(f"no manifest {manifest_url(root, split)}: listing {join(root, split)} once")
        names = list_split(root, split)
        if names:
            try:
                warn(f"wrote {write_manifest(root, split, names)} ({len(names)} objects); later starts read it")
            except Exception as err:
                warn(f"warning: cannot write {manifest_url(root, split)} ({cause(err)}): using the listing from "
                     f"memory; every start lists again until someone with write access runs "
                     f"`{rebuild_command(root, split)}`")
    _register(root, split)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.data.manifest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="the data root URL (data.root), e.g. s3://bucket/imagenet")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    root = args.root.rstrip("/")
    try:
        for split in args.splits:
            names = list_split(root, split)
            if not names:
                print(f"error: no objects under {join(root, split)}", file=sys.stderr)
                return 2
            print(f"wrote {write_manifest(root, split, names)}: {len(names)} objects")
    except (DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
