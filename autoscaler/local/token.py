"""The local stack's control API token: `elasticserving up` writes a fresh random token per run to a
file only its user can read (`default_token_path`: under the per-user tmpfs $XDG_RUNTIME_DIR when set;
the port tells one user's stacks apart); the activator it starts and the CLI send it as a bearer token.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

MAX_TOKEN_BYTES = 4096


def default_token_path(port: int) -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path.home() / ".cache"
    return base / "elasticserving" / f"control-{port}.token"


def token_path_for_server(server: str) -> Path:
    """The default token file of the stack whose control API is `server` (a URL)."""
    parts = urlsplit(server if "://" in server else f"http://{server}")
    return default_token_path(parts.port or 80)


def write_token(path: Path, token: str) -> None:
    """`token` in `path` (mode 0600, directory 0700), replacing any earlier one atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    # O_EXCL | O_NOFOLLOW: never write through a file or link someone else put there.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_token(path: Path) -> str | None:
    """The token in `path`, or None when there is no such file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_BYTES)
    except FileNotFoundError:
        return None
    return data.decode("utf-8", "replace").strip() or None


def remove_token(path: Path, token: str) -> None:
    """Remove `path` if it still holds `token` (a later stack on the same port may have replaced it)."""
    with contextlib.suppress(OSError):
        if read_token(path) == token:
            path.unlink()
