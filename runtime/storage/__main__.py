"""`python -m runtime.storage URI --cache DIR --dest DIR`: the init container of a Pod whose side has a
storageUri. Pulls into the node's cache (hostPath) and links the version's files into `--dest` (the
emptyDir the model container mounts at /mnt/models); AWS_* settings and keys come from the environment."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from runtime.storage.cache import ModelCache
from runtime.storage.errors import StorageError
from runtime.storage.names import ENV_KEYS
from runtime.storage.pull import ModelVersion, PullLimits, pull

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
    p.add_argument("--termination-log", default="/dev/termination-log",
                   help="a failure's reason is written here too (Kubernetes shows it in the Pod's status)")
    args = p.parse_args(argv)

    def say(line: str) -> None:
        print(f"storage: {line}", file=sys.stderr, flush=True)

    env = {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}
    limits = PullLimits(max_bytes=args.max_bytes, read_timeout=args.read_timeout, deadline=args.deadline)
    try:
        cache = ModelCache(args.cache, args.cache_max_bytes, args.protect_seconds)
        version = pull(args.uri, cache, env, args.sha256, limits, say)
        if args.dest:
            link_into(version, Path(args.dest))
    except StorageError as exc:
        say(exc.reason)
        _write(args.termination_log, exc.reason)
        return EXIT_FAILED
    except OSError as exc:  # the cache or the destination (a full disk, a read-only mount)
        reason = f"cannot pull {args.uri.split('?')[0]}: {exc.strerror or exc}"
        say(reason)
        _write(args.termination_log, reason)
        return EXIT_FAILED
    report = version.report()
    if version.cached:
        say(f"{version.uri} is in this node's cache: nothing downloaded ({version.size / 1e6:.1f} MB, "
            f"{version.seconds:.2f}s)")
    else:
        say(f"downloaded {version.uri} ({version.size / 1e6:.1f} MB in {version.seconds:.2f}s)")
    if args.report:
        _write(args.report, json.dumps(report))
    print(json.dumps(report), flush=True)
    return 0


def _write(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError:
        pass  # no termination log outside a Pod


if __name__ == "__main__":
    sys.exit(main())
