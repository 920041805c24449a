"""benchmarks.charts draws the report's chart specs (line, step, bar with min-max) into real PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.charts import render_all

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind,series", [
    ("line", {"off": [[8, 1400.0], [32, 1450.0]], "on": [[8, 1900.0], [32, 5200.0]]}),
    ("step", {"replicas": [[0, 0], [5, 2], [9, 1]]}),
    ("bar", {"plain": [["p50", 0.85, 0.80, 0.87]], "prewarm": [["p50", 0.12, 0.12, 0.13]]}),
])
def test_each_kind_is_drawn_as_a_png(tmp_path: Path, kind: str, series: dict) -> None:
    spec = {"name": f"chart-{kind}", "title": kind, "kind": kind, "xlabel": "x", "ylabel": "y", "series": series}
    (path,) = render_all({"charts": [spec]}, tmp_path)
    assert path == tmp_path / f"chart-{kind}.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000  # a drawn figure, not an empty file
