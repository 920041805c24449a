"""Reliability figures (inputs tried, requests sent/answered, errors by kind, faults survived) that
the reliability tests record into benchmarks/results/reliability.json for the benchmark report."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "reliability.json"
_lock = threading.Lock()


def record(section: str, figures: dict[str, Any]) -> None:
    with _lock:
        PATH.parent.mkdir(parents=True, exist_ok=True)
        data = json.loads(PATH.read_text()) if PATH.exists() else {}
        data[section] = figures
        PATH.write_text(json.dumps(data, indent=2, sort_keys=True))


def load() -> dict[str, Any]:
    return json.loads(PATH.read_text()) if PATH.exists() else {}
