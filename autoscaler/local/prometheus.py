"""`elasticserving up --prometheus`: a real `prometheus` on loopback scraping the local stack (activator,
autoscaler, and every replica through the control API's HTTP service discovery) with deploy/monitoring rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from autoscaler.local.process import die_with_parent, terminate

log = logging.getLogger("elasticserving.prometheus")

RULES = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "rules.yaml"  # the repository root


def scrape_config(activator: str, control: str, rules: list[str], token_file: str | None) -> dict[str, Any]:
    """Prometheus configuration for a local stack (`activator`, `control`: host:port); `token_file` is
    the control API's bearer token, which the service discovery of replicas (/v1/...) needs."""
    sd: dict[str, Any] = {"url": f"http://{control}/v1/prometheus/targets", "refresh_interval": "2s"}
    if token_file:
        sd["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    return {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": rules,
        "scrape_configs": [
            {"job_name": "elasticserving-activator", "static_configs": [{"targets": [activator]}]},
            {"job_name": "elasticserving-autoscaler", "static_configs": [{"targets": [control]}]},
            {"job_name": "elasticserving-runtime", "http_sd_configs": [sd]},
        ],
    }


class LocalPrometheus:
    """The prometheus process for a local stack."""

    def __init__(self, activator: str, control: str, port: int = 9090, token_file: str | None = None) -> None:
        self.activator, self.control, self.port, self.token_file = activator, control, port, token_file
        self.url = f"http://127.0.0.1:{port}"  # its HTTP API
        self.binary = shutil.which("prometheus")
        self._tmp = tempfile.TemporaryDirectory(prefix="elasticserving-prometheus-")
        self.dir = Path(self._tmp.name)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if not self.binary:
            raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
        rules = [str(RULES)] if RULES.exists() else []
        cfg = self.dir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(scrape_config(self.activator, self.control, rules, self.token_file)))
        with (self.dir / "prometheus.log").open("ab") as stderr:  # the child keeps its own copy
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=stderr, preexec_fn=die_with_parent)
        log.info("prometheus on %s (config %s)", self.url, cfg)

    async def close(self) -> None:
        await terminate(self.proc)
        with contextlib.suppress(OSError):
            self._tmp.cleanup()
