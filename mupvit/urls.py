"""Which roots are URLs, and whether this install can read them (no torch, no fsspec at import: the config's
checks use it)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(root: str | os.PathLike) -> bool:
    return isinstance(root, str) and bool(URL.match(root))


def is_remote(path: str | os.PathLike) -> bool:
    """A file to fetch before reading: an fsspec URL (s3://...) or an MLflow artifact URI (runs:/<run_id>/...)."""
    return isinstance(path, str) and (is_url(path) or path.startswith(("runs:/", "models:/")))


def fetch(uri: str, folder: Path) -> Path:
    """A local copy in `folder` of the file at `uri` (is_remote). An MLflow URI is downloaded by MLflow's own CLI
    in a child process, with this process's MLFLOW_TRACKING_* variables: mupvit imports no mlflow (README, Layout),
    and a trainer installed without the platform gets a one-line error instead of an ImportError."""
    if uri.startswith(("runs:/", "models:/")):
        if importlib.util.find_spec("mlflow") is None:
            raise ValueError(f"{uri}: an MLflow artifact URI needs mlflow (pip install 'mupvit[platform]'); or "
                             "download it (`mlflow artifacts download -u URI`) and pass the file")
        done = subprocess.run([sys.executable, "-m", "mlflow", "artifacts", "download", "--artifact-uri", uri,
                               "--dst-path", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise ValueError(f"{uri}: cannot download it from the MLflow tracking server "
                             f"{os.environ.get('MLFLOW_TRACKING_URI', '(MLFLOW_TRACKING_URI unset)')}: "
                             f"{lines[-1] if lines else 'exit ' + str(done.returncode)}")
        path = Path(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else folder / uri.rsplit("/", 1)[-1]
        if not path.is_file():
            raise ValueError(f"{uri}: a folder of artifacts, not a file; name the file (runs:/<run_id>/<path>)")
        return path
    check_url(uri)
    import fsspec

    target = folder / uri.rstrip("/").rsplit("/", 1)[-1]
    try:
        fsspec.open(uri).fs.get(uri, str(target))
    except (OSError, ValueError) as err:  # FileNotFoundError, PermissionError, a refused endpoint
        first = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{uri}: cannot read it ({type(err).__name__}: {first})") from None
    return target


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
