"""`python -m runtime.storage URI --cache DIR --dest DIR`: the storage sidecar of a Pod whose side has a
storageUri. Pulls into the node's cache (hostPath) and links the version's files into `--dest` (the
emptyDir the model container mounts at /mnt/models); AWS_* settings and keys come from the environment.
With `--stay` it hands its report to the model container started beside it (runtime.storage.handoff)
and then idles until the Pod ends (a sidecar that exits is restarted)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from runtime.storage import handoff
from runtime.storage.cache import ModelCache
from runtime.storage.errors import StorageError
from runtime.storage.names import ENV_KEYS
from runtime.storage.pull import ModelVersion, PullLimits, pull
from runtime.storage.uri import StorageUriError, parse_uri

EXIT_FAILED = 4


def link_into(version: ModelVersion, dest: Path) -> None:
    """Replace what `dest` holds with links to the version's top-level entries (a link, unlike a copy,
    costs nothing; the cache is mounted read-only at the same path in the model container)."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.iterdir():
        if old.is_symlink() or old.is_file():
            old.unlink()
    for item in sorted(version.path.iterdir()):
        os.symlink(item, dest / item.name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.storage", description=__doc__)
    p.add_argument("uri")
    p.add_argument("--cache", required=True, help="the node-local cache directory")
    p.add_argument("--dest", help="link the model's files into this directory")
    p.add_argument("--sha256", help="expected SHA-256 of the downloaded file or archive")
    p.add_argument("--cache-max-bytes", type=int, default=50 * 1024**3)
    p.add_argument("--protect-seconds", type=float, default=3600.0,
                   help="entries used this recently are never evicted (Pods may still read them)")
    p.add_argument("--max-bytes", type=int, default=PullLimits.max_bytes)
    p.add_argument("--read-timeout", type=float, default=PullLimits.read_timeout)
    p.add_argument("--deadline", type=float, default=PullLimits.deadline)
    p.add_argument("--report", help="write the pull's report (JSON) here, for the runtime's metrics")
    p.add_argument("--stay", action="store_true",
                   help="a sidecar: hand the report (or the failure) over through --report and its FIFO, "
                        "then idle until SIGTERM")
    p.add_argument("--termination-log", default="/dev/termination-log",
                   help="a failure's reason is written here too (Kubernetes shows it in the Pod's status)")
    args = p.parse_args(argv)

    def say(line: str) -> None:
        print(f"storage: {line}", file=sys.stderr, flush=True)

    if args.stay:
        # In a container this process is PID 1: without a handler SIGTERM would be ignored until the kill.
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        if args.report:
            handoff.clear(Path(args.report))
    env = {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}
    limits = PullLimits(max_bytes=args.max_bytes, read_timeout=args.read_timeout, deadline=args.deadline)
    try:
        cache = ModelCache(args.cache, args.cache_max_bytes, args.protect_seconds)
        version = pull(args.uri, cache, env, args.sha256, limits, say)
        if args.dest:
            link_into(version, Path(args.dest))
    except StorageError as exc:
        return _failed(args, exc.reason, say)
    except OSError as exc:  # the cache or the destination (a full disk, a read-only mount)
        return _failed(args, f"cannot pull {_shown(args.uri)}: {exc.strerror or exc}", say)
    report = version.report()
    if version.cached:
        say(f"{version.uri} is in this node's cache: nothing downloaded ({version.size / 1e6:.1f} MB, "
            f"{version.seconds:.2f}s)")
    else:
        say(f"downloaded {version.uri} ({version.size / 1e6:.1f} MB in {version.seconds:.2f}s)")
    print(json.dumps(report), flush=True)
    if args.stay and args.report:
        handoff.publish(Path(args.report), report)
        idle()
    elif args.report:
        _write(args.report, json.dumps(report))
    return 0


def _failed(args: argparse.Namespace, reason: str, say: Callable[[str], None]) -> int:
    say(reason)
    _write(args.termination_log, reason)
    if args.stay and args.report:
        handoff.publish(Path(args.report), {"uri": _shown(args.uri), "error": reason})
    return EXIT_FAILED


def _shown(uri_text: str) -> str:
    """The URI as errors show it (StorageUri.display: no user info, no query string)."""
    try:
        return parse_uri(uri_text).display
    except StorageUriError:  # pull() said why; nothing of the text is shown
        return "the storageUri"


def idle() -> None:
    """Until the Pod ends, as a bare interpreter: the pull's libraries and buffers are given back."""
    os.execv(sys.executable, [sys.executable, "-S", "-c",
                              "import os, signal; signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
                              "while True: signal.pause()"])


def _write(path: str | None, text: str) -> None:
    if path:
        with contextlib.suppress(OSError), open(path, "w") as f:  # no termination log outside a Pod
            f.write(text)


if __name__ == "__main__":
    sys.exit(main())
