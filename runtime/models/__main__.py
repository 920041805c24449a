"""`python -m runtime.models build NAME [--out DIR] [--force]`: build a pretrained model for the runtime
(see runtime.models.build); `python -m runtime.models list`: the known models and whether they are built."""

from __future__ import annotations

import argparse
import sys

from runtime.models import MODELS, model_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runtime.models", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build NAME into its cache directory (nothing to do when built)")
    b.add_argument("name", choices=sorted(MODELS))
    b.add_argument("--out", default=None, help="directory to build into (default: the cache, "
                                                "$ELASTICSERVING_MODELS or ~/.cache/elasticserving/models, /NAME)")
    b.add_argument("--force", action="store_true", help="rebuild even when built")
    sub.add_parser("list", help="known models and where they are built")
    args = p.parse_args(argv)
    if args.command == "list":
        for name, (package, what) in sorted(MODELS.items()):
            try:
                where = str(model_dir(name))
            except FileNotFoundError:
                where = "not built"
            print(f"{name}\t{what}\t(from {package})\t{where}")
        return 0
    from runtime.models.build import main as build_main

    return build_main(args.name, args.out, args.force)


sys.exit(main())
