"""Which roots are URLs, and whether this install can read them (no torch, no fsspec at import: the config's
checks use it)."""

from __future__ import annotations

import os
import re

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(root: str | os.PathLike) -> bool:
    return isinstance(root, str) and bool(URL.match(root))


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def check_url(url: str) -> None:
    """Raise ValueError (one line) when no fsspec filesystem serves `url`'s scheme, naming the package to install."""
    import fsspec

    scheme = protocol(url)
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as err:
        package = PACKAGES.get(scheme, "the fsspec implementation for it")
        raise ValueError(f"{url}: reading {scheme}:// needs the package {package} (pip install {package}); "
                         f"{str(err).splitlines()[0]}") from None
    except ValueError:
        raise ValueError(f"{url}: unknown URL scheme {scheme!r}; use a local path, s3://bucket/prefix, gs://... "
                         "or another fsspec protocol") from None
    if not url.split("://", 1)[1].strip("/"):
        raise ValueError(f"{url}: no bucket or path after {scheme}://")
