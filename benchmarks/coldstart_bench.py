"""Cold start of the LAC service on the local platform: time from the first request at zero replicas
to its answer, over repeated trials (the service is deleted and re-applied between trials).
Plain start (`sh -c python3 -m runtime ...`, paying for `import paddle`) against pre-warmed start
(`up --prewarm`: forked from a zygote that has imported it), side by side in one run."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.load import percentile
from benchmarks.stats import summarize
from tests.helpers import paddleservice, start_stack, wait_for, write_yaml

RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"
BODY = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}


def trials(n: int, extra: list[str]) -> list[float]:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        f = write_yaml(Path(tmp) / "c.yaml", paddleservice("cold", "bench", RUNTIME, minScale=0))
        s = start_stack(Path(tmp), [f], extra=extra)
        try:
            if "--prewarm" in extra:
                wait_for(lambda: any("zygote paddle ready" in line for line in s.output), 60, 0.05, "the zygote")
            for _ in range(n):
                t0 = time.perf_counter()
                status, _, data = s.request("cold.bench.example.com", "/lac/prediction", BODY, timeout=60)
                took = time.perf_counter() - t0
                assert status == 200, data
                out.append(took)
                # back to zero at once: delete and re-apply
                assert s.cli("delete", "cold").returncode == 0
                assert s.cli("apply", "-f", str(f)).returncode == 0
        finally:
            s.stop()
    return out


def run(quick: bool = False) -> dict:
    n = 3 if quick else 20
    res: dict = {}
    for mode, extra in (("plain", []), ("prewarm", ["--prewarm"])):
        t = trials(n, extra)
        # Each trial is one cold start: the figure is their median with min-max, and the p95.
        res[mode] = {"seconds": summarize(t), "p95_s": percentile(t, 95)}
    res["speedup_p50"] = res["plain"]["seconds"]["median"] / res["prewarm"]["seconds"]["median"]
    res["goal"] = "pre-warmed p50 < 0.3 s and >= 5x faster than plain"
    res["goal_met"] = res["prewarm"]["seconds"]["median"] < 0.3 and res["speedup_p50"] >= 5
    res["charts"] = [{
        "name": "coldstart-local", "title": f"LAC cold start from zero, local platform ({n} trials each)",
        "kind": "bar", "xlabel": "", "ylabel": "seconds to the first answer (median, min-max)",
        "series": {mode: [[mode, res[mode]["seconds"]["median"], res[mode]["seconds"]["min"],
                           res[mode]["seconds"]["max"]]] for mode in ("plain", "prewarm")}}]
    return res


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
