"""A real Jaeger (v2 all-in-one, in memory; scripts/build-jaeger.sh) on loopback for the tracing tests:
OTLP in on free ports, its query API (`/api/traces/<trace id>`) read back by `trace()`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import free_port, require_binary, wait_for

# Jaeger's own all-in-one configuration with every port chosen by us (its default ports may be taken by
# another test run on this machine) and its own telemetry off.
CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}
  telemetry: {{metrics: {{level: none}}, logs: {{level: warn}}}}
extensions:
  jaeger_query:
    storage: {{traces: mem}}
    http: {{endpoint: "127.0.0.1:{query}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
  jaeger_storage:
    backends: {{mem: {{memory: {{max_traces: 10000}}}}}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  batch: {{timeout: 100ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: mem}}
"""


@dataclass
class Jaeger:
    otlp_http: str  # OTEL_EXPORTER_OTLP_ENDPOINT for http/protobuf
    otlp_grpc: str  # ... for grpc
    query: str  # the query API's base URL
    pid: int = 0  # the collector's process (its CPU is part of what tracing costs)

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans Jaeger holds for `trace_id` ([] while it has none), each with its process's
        `serviceName`."""
        try:
            with urllib.request.urlopen(f"{self.query}/api/traces/{trace_id}", timeout=5) as r:
                data = json.load(r).get("data") or []
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return []
            raise
        if not data:
            return []
        processes = data[0]["processes"]
        return [{**s, "serviceName": processes[s["processID"]]["serviceName"]} for s in data[0]["spans"]]

    def wait_spans(self, trace_id: str, predicate, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the trace's spans satisfy `predicate` (spans arrive in batches, from each process)."""
        seen: list[dict[str, Any]] = []

        def check() -> list[dict[str, Any]] | None:
            seen[:] = self.trace(trace_id)
            return seen if seen and predicate(seen) else None

        try:
            return wait_for(check, timeout, 0.2, f"trace {trace_id} in Jaeger")
        except AssertionError as e:
            held = sorted(f"{s['serviceName']}: {s['operationName']}" for s in seen)
            raise AssertionError(f"{e}; the spans it holds: {held or 'none'}") from None


def require_jaeger() -> Path:
    """The `jaeger` scripts/build-jaeger.sh built ($JAEGER first), or skip (fail when CI is set)."""
    return require_binary("jaeger", "JAEGER", "scripts/build-jaeger.sh")


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """`env` in os.environ for the block (what `up` and every process it starts inherit), then as before."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def run_jaeger(binary: Path, workdir: Path) -> Iterator[Jaeger]:
    ports = {k: free_port() for k in ("query", "query_grpc", "grpc", "http")}
    cfg = workdir / "jaeger.yaml"
    cfg.write_text(CONFIG.format(**ports))
    log = open(workdir / "jaeger.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(binary), "--config", f"file:{cfg}"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    j = Jaeger(f"http://127.0.0.1:{ports['http']}", f"http://127.0.0.1:{ports['grpc']}",
               f"http://127.0.0.1:{ports['query']}", proc.pid)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"jaeger exited ({proc.returncode}): {(workdir / 'jaeger.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{j.query}/api/services", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        started = time.monotonic()
        wait_for(up, 60, 0.1, "jaeger's query API")
        j.start_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        yield j
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
