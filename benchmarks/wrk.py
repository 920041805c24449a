"""Closed-loop HTTP load with `wrk` (Debian package `wrk`), a C load generator that leaves the CPU to
the servers under test; same result shape as benchmarks.load.closed_loop."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
# Latency quantiles wrk prints after the run (its `done` hook), enough points for a CDF chart.
CDF_QUANTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 99.5, 99.9, 100)
_DONE = ("done = function(summary, latency, requests)\n"
         "  for _, q in ipairs({" + ", ".join(str(q) for q in CDF_QUANTILES) + "}) do\n"
         "    io.write(string.format(\"cdf %g %d\\n\", q, latency:percentile(q)))\n"
         "  end\n"
         "end\n")


def available() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> dict[str, Any]:
    """Throughput, p50/p99 and errors from `wrk --latency` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)", output, re.M)}
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(x) for x in m.groups())
    # (latency ms, quantile) pairs from the `done` hook, when the script had it.
    cdf = [[int(us) / 1000.0, float(q) / 100.0] for q, us in re.findall(r"^cdf ([\d.]+) (\d+)$", output, re.M)]
    return {"requests": total, "errors": errors, "rps": rps, "p50_ms": pct.get(50, float("nan")),
            "p99_ms": pct.get(99, float("nan")), "generator": "wrk", "cdf": cdf}


def closed_loop(url: str, body: bytes, connections: int, seconds: float,
                headers: dict[str, str] | None = None, threads: int = 1) -> dict[str, Any]:
    """`connections` keep-alive connections posting `body` to `url` for `seconds`."""
    lua_headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
    script = (f'wrk.method = "POST"\nwrk.body = [[{body.decode()}]]\n'
              f'wrk.headers["Content-Type"] = "application/json"\n{lua_headers}{_DONE}')
    with tempfile.TemporaryDirectory() as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(script)
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                              "-s", str(lua), url], capture_output=True, text=True, timeout=seconds + 60,
                             check=True).stdout
    return parse(out)
