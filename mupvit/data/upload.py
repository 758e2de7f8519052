"""Put a local dataset into a bucket, and write its split manifests there:

    python -m mupvit.data.upload /data/imagenet s3://bucket/imagenet --splits train val --workers 32

Copies every file under LOCAL_ROOT (e.g. meta.bin, train/, val/) to the same relative path under the URL, in
threads, with a progress bar; a file already there with the same size is not sent again, so an interrupted upload
resumes by running the same command. Then writes <url>/<split>.manifest.json.gz for each split from the files it
put (no listing of the bucket). Endpoint and credentials: the standard AWS variables (AWS_ENDPOINT_URL, ...).
Exit 0 when all is there, 2 on a bad argument or a failed upload (naming the file and the cause).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from mupvit.data.manifest import write_manifest
from mupvit.data.storage import cause, filesystem, join
from mupvit.urls import check_url, is_url


def local_files(root: Path) -> list[str]:
    """Every file under root, relative to it with '/', sorted."""
    return sorted(str(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())


def present(url: str) -> dict[str, int]:
    """Sizes of the objects already under url, by relative path (one listing)."""
    fs = filesystem(url)
    base = fs._strip_protocol(url).rstrip("/") + "/"
    try:
        found = fs.find(url, withdirs=False, detail=True)
    except FileNotFoundError:
        return {}
    return {fs._strip_protocol(name)[len(base):]: int(info.get("size") or 0) for name, info in found.items()}


def upload(local: Path, url: str, splits: list[str], workers: int) -> int:
    files = local_files(local)
    there = present(url)
    todo = [f for f in files if there.get(f) != (local / f).stat().st_size]
    fs = filesystem(url)

    def put(name: str) -> None:
        try:
            fs.put_file(str(local / name), join(url, name))
        except Exception as err:
            raise OSError(f"cannot upload {local / name} to {join(url, name)}: {cause(err)}") from err

    print(f"{len(files)} files under {local}: {len(files) - len(todo)} already in {url}, {len(todo)} to upload")
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(put, todo), total=len(todo), desc="uploading", unit="file", file=sys.stderr):
            pass
    for split in splits:
        names = [f[len(split) + 1:] for f in files if f.startswith(split + "/")]
        if not names:
            print(f"error: no files under {local / split}", file=sys.stderr)
            return 2
        print(f"wrote {write_manifest(url, split, names)}: {len(names)} objects")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.data.upload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("local_root", type=Path, help="the local data root (its splits are folders in it)")
    parser.add_argument("url", help="where it goes, e.g. s3://bucket/imagenet (the new data.root)")
    parser.add_argument("--splits", nargs="+", help="the splits to write manifests for (default: every folder)")
    parser.add_argument("--workers", type=int, default=16, help="uploads in flight")
    args = parser.parse_args(argv)
    local, url = args.local_root.expanduser().resolve(), args.url.rstrip("/")
    try:
        if not is_url(url):
            raise ValueError(f"{url} is not a URL (s3://bucket/prefix, ...)")
        check_url(url)
        if not local.is_dir():
            raise ValueError(f"{local}: not a folder")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = args.splits or sorted(p.name for p in local.iterdir() if p.is_dir())
    try:
        return upload(local, url, splits, args.workers)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
