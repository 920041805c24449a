"""Reliability figures for the report: runs the soak, fault, zero-loss, hostile-client and fuzz tests
(tests/reliability, tests/security; pytest, loopback only)
and returns what they recorded: requests sent/answered, errors by kind, faults survived, inputs tried."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.reliability.figures import PATH, load

ROOT = Path(__file__).resolve().parents[1]


def run(quick: bool = False) -> dict:
    if PATH.exists():
        PATH.unlink()
    env = {**os.environ, "ELASTICSERVING_SOAK_SECONDS": "20" if quick else "300"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/reliability", "tests/security"], cwd=ROOT,
                          env=env,
                          capture_output=True, text=True)
    figures = load()
    figures["pytest_exit_code"] = proc.returncode
    figures["pytest_summary"] = (proc.stdout.strip().splitlines() or [""])[-1]
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
