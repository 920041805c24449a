"""`python3 -m imagebuild [--context DIR] [--cache DIR] [NAME...]`: build, print `IMAGE TARBALL` lines.

Called by scripts/build-images.sh (which checks the host tools and does the `ctr images import`).
One build at a time per cache (a lock), so two callers never write the same layer.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time
from pathlib import Path

from imagebuild.build import TARGETS, Cache, build, log, resolve_target
from imagebuild.dockerfile import DockerfileError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m imagebuild", description=__doc__)
    ap.add_argument("--context", type=Path, default=Path(__file__).resolve().parents[2],
                    help="the build context: the repository root")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "ELASTICSERVING_IMAGE_CACHE", Path.home() / ".cache/elasticserving/images")))
    ap.add_argument("names", nargs="*", help=f"images to build (default: all of {', '.join(TARGETS)})")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("build-images: must run as root (chroot, mounts, files owned by root)", file=sys.stderr)
        return 2
    try:
        names = list(dict.fromkeys(resolve_target(n) for n in args.names)) or list(TARGETS)
    except DockerfileError as exc:
        print(f"build-images: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("IMAGEBUILD_PRIVATE_MOUNTS") != "1":
        # The whole build in its own mount namespace: the overlays it mounts vanish with it, even
        # when it is killed.
        os.environ["IMAGEBUILD_PRIVATE_MOUNTS"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "--", sys.executable,
                              "-m", "imagebuild", *(argv if argv is not None else sys.argv[1:])])
    cache = Cache(args.cache)
    with open(cache.root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in names:
            start = time.monotonic()
            try:
                out = build(args.context.resolve(), name, cache)
            except DockerfileError as exc:
                print(f"build-images: {name}: {exc}", file=sys.stderr)
                return 1
            log(f"{name}: {out.stat().st_size / 1e6:.0f} MB in {time.monotonic() - start:.1f}s")
            print(f"{TARGETS[name].names[0]} {out}", flush=True)
        cache.prune_unpacked()
    return 0


if __name__ == "__main__":
    sys.exit(main())
