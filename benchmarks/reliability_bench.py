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
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "tests/reliability", "tests/security"], cwd=ROOT,
                          env=env,
                          capture_output=True, text=True)
    figures = load()
    figures["pytest_exit_code"] = proc.returncode
    lines = proc.stdout.strip().splitlines()
    figures["pytest_summary"] = (lines or [""])[-1]
    failed = [ln.split(" ", 1)[1].split(" - ")[0] for ln in lines if ln.startswith("FAILED ")]
    if failed:  # which tests, so a red report says where to look
        figures["pytest_failed"] = ", ".join(failed)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
