"""Where a run's checkpoints and console log go (cluster.storage_path: a folder, or a bucket URL), read the same way
on every node: a bucket through an explicit pyarrow filesystem made from the standard AWS variables (so a custom
endpoint, e.g. an S3-compatible server, works; the job's runtime env, orchestration.cluster.job_runtime_env, takes
them to every Ray process of the run, so a node started without them works), a write check run on a worker node
before any training, and the run's one-driver lock held in the Ray cluster itself, where every driver sees it."""

from __future__ import annotations

import os
import uuid
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs

from mupvit.errors import ConfigError, OutputError
from mupvit.outputs import describe_holder, holder_info

LOCK_NAMESPACE = "mupvit-run-locks"


def is_bucket(storage_path: str) -> bool:
    return "://" in storage_path


def s3_filesystem() -> pyarrow.fs.S3FileSystem:
    """pyarrow's S3 from the standard AWS variables; AWS_ENDPOINT_URL(_S3) may name any S3-compatible server."""
    env = os.environ
    options: dict[str, Any] = {"region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint := env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"):
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options.update(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                       session_token=env.get("AWS_SESSION_TOKEN"))
    return pyarrow.fs.S3FileSystem(**options)


def ray_storage(storage_path: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig: s3:// through s3_filesystem (the path without
    its scheme, as Ray wants it then); a folder or another scheme as Ray resolves it itself."""
    if storage_path.startswith("s3://"):
        return storage_path.removeprefix("s3://").rstrip("/"), s3_filesystem()
    return storage_path, None


def stored_uri(storage_path: str, path: str) -> str:
    """A path of Ray's storage (scheme stripped for an explicit filesystem) as the URL a user can open."""
    return f"s3://{path}" if storage_path.startswith("s3://") and "://" not in path else path


def cause_of(err: OSError) -> str:
    """pyarrow's S3 error in words: no credentials, no such bucket, unreachable endpoint, or its own text."""
    text = str(err)
    for needle, cause in (("NoSuchBucket", "no such bucket"), ("does not exist", "no such bucket"),
                          ("InvalidAccessKeyId", "the credentials are refused"),
                          ("SignatureDoesNotMatch", "the credentials are refused"),
                          ("AccessDenied", "access denied for these credentials"),
                          ("No response body", "access denied or no credentials"),
                          ("credentials", "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"),
                          ("resolv", "the endpoint cannot be reached (set AWS_ENDPOINT_URL for a non-AWS server)"),
                          ("onnect", "the endpoint cannot be reached"), ("imeout", "the endpoint cannot be reached")):
        if needle in text:
            return cause
    return text.splitlines()[0][:200]


def check_storage_writable(storage_path: str) -> None:
    """Write and delete a small object in a bucket storage_path, where this runs (a worker node, in the data
    probe): an OutputError naming the bucket and the cause, instead of pyarrow's traceback in Ray Train's controller
    once training started. A folder is checked by the driver (mupvit.outputs.check_writable)."""
    if not is_bucket(storage_path):
        return
    path, fs = ray_storage(storage_path)
    if fs is None:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage_path)
    probe = f"{path}/.mupvit-write-check-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except OSError as err:
        bucket = urlparse(storage_path).netloc
        raise OutputError(f"cluster.storage_path: cannot write to bucket {bucket!r} of {storage_path} on a "
                          f"worker node: {cause_of(err)}") from None


class StoredFile:
    """One file of the run's storage, written whole from a local file or text (console.log, a marker)."""

    def __init__(self, fs: pyarrow.fs.FileSystem, path: str) -> None:
        self.fs, self.path = fs, path

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pyarrow.fs.FileType.NotFound

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_bytes(self, data: bytes) -> None:
        self.fs.create_dir(self.path.rpartition("/")[0], recursive=True)
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)

    def read_text(self) -> str:
        with self.fs.open_input_stream(self.path) as source:
            return source.read().decode(errors="replace")

    def upload(self, local: str | os.PathLike) -> None:
        with open(local, "rb") as source:
            self.write_bytes(source.read())


class RunLockHolder:
    """The body of the named actor that holds a bucket run's lock: who holds it."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info

    def holder(self) -> dict[str, Any]:
        return self.info


class ClusterLock:
    """One driver per run for a bucket storage_path: a named actor in the Ray cluster (namespace LOCK_NAMESPACE).
    Not detached: it belongs to the driver's job and dies with it, so a killed driver frees the run. A second
    driver is refused at once, naming the holder, in the words of mupvit.outputs.FolderLock."""

    def __init__(self, key: str, what: str) -> None:
        self.key, self.what, self.actor = key, what, None

    def __enter__(self) -> ClusterLock:
        import ray

        cls = ray.remote(num_cpus=0)(RunLockHolder)
        try:
            self.actor = cls.options(name=self.key, namespace=LOCK_NAMESPACE,
                                     lifetime="non_detached").remote(holder_info())
        except ValueError:  # the name is taken: another live driver holds the run
            other = ray.get(ray.get_actor(self.key, namespace=LOCK_NAMESPACE).holder.remote())
            holder = describe_holder(other)
            raise ConfigError(f"{self.what}: {self.key} is in use by {holder}; wait for it to finish, or stop "
                              "it first") from None
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self.actor is not None and ray.is_initialized():
            ray.kill(self.actor)
