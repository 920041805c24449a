"""Entry point of the benchmark suite: `python -m benchmarks [--quick] [--only NAME ...]`.

Runs each suite's `run(quick)` in turn, shows progress, and writes a JSON + markdown report."""

from __future__ import annotations

import sys

from benchmarks.run import main

sys.exit(main())
