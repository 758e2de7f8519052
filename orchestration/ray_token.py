"""Ray's token auth for this user's local heads: where the token lives, creating it (owner-only) on first use, the
HTTP header the job server asks for, and turning token auth on in this process."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def token_path() -> Path:
    """Where Ray's token auth reads the cluster's token: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (Ray's own
    order, after the RAY_AUTH_TOKEN variable itself)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def stored_token() -> str:
    """This user's token as Ray finds it (RAY_AUTH_TOKEN, else the token file), or "" when there is none yet."""
    if token := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return token
    return token_path().read_text().strip() if token_path().is_file() else ""


def ensure_token() -> str:
    """The token of this user's local heads, generated on first use as Ray's `ray get-auth-token --generate` does
    (256 random bits), but created readable by its owner only: whoever reads it can run code on the cluster."""
    if token := stored_token():
        return token
    path = token_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
    token = path.read_text().strip()
    if not token:
        raise RuntimeError(f"Ray token file {path} is empty: delete it and a new token is generated")
    return token


def auth_headers() -> dict[str, str]:
    """The HTTP header that Ray's dashboard and job server ask for under token auth; {} when this user has no token
    (a cluster without auth, e.g. one on another machine, needs none)."""
    token = stored_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def use_token_auth() -> None:
    """Token auth on for Ray in this process, with this user's token: for a driver or client of a local head (or a
    Ray this process starts). Ray read RAY_AUTH_MODE when it was imported, so its config is reloaded, as Ray's own
    default-on token setup does."""
    from ray._raylet import Config

    ensure_token()
    if os.environ.get("RAY_AUTH_MODE") != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")
