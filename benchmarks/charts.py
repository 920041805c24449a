"""PNG charts for the benchmark report: suites return chart specs in their results, run.py hands them
here after the suites ran, and the files land in benchmarks/results/ beside report.md.

A chart spec is plain data, so suites need no plotting code: `{"name": "file-stem", "title": ...,
"kind": "line" | "step" | "bar", "xlabel": ..., "ylabel": ..., "series": {label: [[x, y], ...]},
"logx": bool}`; for "bar" each series is `[[category, value], ...]` (or `[category, median, min, max]`,
drawn with min-max error bars)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def render(chart: dict[str, Any], out_dir: Path) -> Path:
    """Draw one chart spec into `out_dir/<name>.png` and return the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    kind = chart.get("kind", "line")
    series: dict[str, list[list[Any]]] = chart["series"]
    if kind == "bar":
        labels = list(series)
        categories = list(dict.fromkeys(str(p[0]) for pts in series.values() for p in pts))
        width = 0.8 / max(1, len(labels))
        for i, label in enumerate(labels):
            pts = {str(p[0]): p for p in series[label]}
            xs = [c for c in range(len(categories)) if categories[c] in pts]
            ys = [float(pts[categories[c]][1]) for c in xs]
            err = None
            if all(len(pts[categories[c]]) >= 4 for c in xs):
                err = [[y - float(pts[categories[c]][2]) for c, y in zip(xs, ys, strict=True)],
                       [float(pts[categories[c]][3]) - y for c, y in zip(xs, ys, strict=True)]]
            ax.bar([x + (i - (len(labels) - 1) / 2) * width for x in xs], ys, width, yerr=err, capsize=3,
                   label=label)
        ax.set_xticks(range(len(categories)), categories)
    else:
        for label, pts in series.items():
            xs, ys = [float(p[0]) for p in pts], [float(p[1]) for p in pts]
            if kind == "step":
                ax.step(xs, ys, where="post", label=label)
            else:
                ax.plot(xs, ys, marker="o" if len(xs) <= 20 else None, markersize=3, label=label)
        if chart.get("logx"):
            ax.set_xscale("log")
    ax.set_title(chart.get("title", chart["name"]))
    ax.set_xlabel(chart.get("xlabel", ""))
    ax.set_ylabel(chart.get("ylabel", ""))
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{chart['name']}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def render_all(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every chart spec found under a suite's `charts` key (a list), drawn into out_dir."""
    return [render(c, out_dir) for c in results.get("charts", [])]
