"""Data roots that are URLs (s3://bucket/prefix, gs://..., any fsspec URL): the filesystem, and object reads with
bounded retries.

S3's endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION), which botocore reads itself, so a custom endpoint works unchanged.

Each process makes its own filesystem object (keyed by pid): a DataLoader worker forked after the main process
listed the bucket must not share its aiohttp session. The libraries' own retries are turned off so that one
policy, READ_DELAYS below, bounds a read: a missing or forbidden object fails at once (a bad image: data.on_bad_image
applies), anything else (connection refused, timeouts, 5xx) is retried, then raised as StorageUnavailable.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

from mupvit.data.datasets import DataError
from mupvit.urls import URL, check_url, is_url, protocol

__all__ = ["URL", "check_url", "is_url", "protocol", "filesystem", "join", "read_object", "read_if_present",
           "StorageUnavailable", "ObjectMissing"]

READ_DELAYS = (0.5, 1.0, 2.0, 4.0)  # seconds before each retry of a read: 5 tries within ~8 s
# Per protocol: the library's retries off (ours bound a read), no listing cache (a rebuilt manifest lists anew).
OPTIONS: dict[str, dict[str, Any]] = {
    "s3": {"use_listings_cache": False,
           "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 10, "read_timeout": 60}},
    "gs": {"use_listings_cache": False},
    "gcs": {"use_listings_cache": False},
}
_FILESYSTEMS: dict[tuple[int, str], Any] = {}


class ObjectMissing(DataError):
    """No object at the URL (a bad image when listed: data.on_bad_image applies)."""


class StorageUnavailable(DataError):
    """An object could not be read after every retry for a reason outside the object (network, server): the run
    stops whatever data.on_bad_image says, since skipping would skip every image of an outage."""


def filesystem(url: str) -> Any:
    """This process's fsspec filesystem for `url`'s protocol (a new one in each forked worker)."""
    import fsspec

    key = (os.getpid(), protocol(url))
    if key not in _FILESYSTEMS:
        # botocore says at INFO where it found credentials and the endpoint, once per loader process: on a Ray
        # worker (whose root logger is at INFO) that is two lines per worker on the driver's console.
        logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLogger("botocore").level))
        fs = fsspec.filesystem(key[1], skip_instance_cache=True, **OPTIONS.get(key[1], {}))
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs's own retry loop; ours bounds the read
        _FILESYSTEMS[key] = fs
    return _FILESYSTEMS[key]


def join(root: str, *parts: str) -> str:
    """root/part/...: a URL joined with '/', a local path with the OS's separator."""
    if is_url(root):
        return "/".join([root.rstrip("/"), *parts])
    return os.path.join(root, *parts)


def cause(err: BaseException) -> str:
    """The first line of an exception, with its type when the text alone says little."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_object(url: str, hint: str = "") -> bytes:
    """The bytes of the object at `url`. A missing or forbidden object raises DataError at once (`hint` is added:
    e.g. how to rebuild a stale manifest); other failures are retried after each of READ_DELAYS (with jitter, so
    workers do not retry in step) and then raise StorageUnavailable naming the URL and the last cause."""
    tries = len(READ_DELAYS) + 1
    for attempt in range(tries):
        try:
            return filesystem(url).cat_file(url)
        except FileNotFoundError as err:
            raise ObjectMissing(f"cannot read {url}: no such object ({cause(err)}){hint}") from err
        except PermissionError as err:
            raise DataError(f"cannot read {url}: access denied ({cause(err)}); check the credentials "
                            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's policy") from err
        except Exception as err:  # network, timeouts, server errors: worth another try
            if attempt == tries - 1:
                raise StorageUnavailable(
                    f"cannot read {url} after {tries} tries over {sum(READ_DELAYS):g} s: {cause(err)}; check the "
                    "endpoint (AWS_ENDPOINT_URL) and the network, then run the same command to resume") from err
            time.sleep(READ_DELAYS[attempt] * random.uniform(0.75, 1.25))
    raise AssertionError("unreachable")


def read_if_present(url: str) -> bytes | None:
    """The bytes of the object at `url`, None when there is none (other failures raise as read_object's)."""
    try:
        return read_object(url)
    except ObjectMissing:
        return None
