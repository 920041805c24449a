"""The package boundaries of docs/architecture.md, checked: which of our packages each may import.

Read from the source with `ast` (every import, also the ones inside functions), so a shortcut from one
room into another fails here instead of in a reviewer's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

OURS = ("runtime", "activator", "autoscaler")

# package -> what of ours it may import beyond itself: "core" is autoscaler/ without kube/ and local/
ALLOWED = {
    "runtime": (),
    # runtime.tracing: the one OpenTelemetry set-up (provider, exporter, dropped-span count) of both servers
    # runtime.errors: the one vocabulary of outcome codes and their HTTP / gRPC statuses (pure, no I/O)
    # runtime.protocols.http_server: HttpLimits, the HTTP limits both servers' front doors share
    # runtime.loop_metrics: the request path's counters and histograms of both servers, read at scrape
    "activator": ("autoscaler.wire", "runtime.errors", "runtime.tracing", "runtime.protocols.http_server",
                  "runtime.loop_metrics"),
    # storageUri validation: one parser for the spec and the pull (pure, no I/O)
    # runtime.tracing: the controller's scale-from-zero span, set up like the activator's and the runtime's
    "autoscaler": ("core", "runtime.storage.uri", "runtime.tracing"),
    "autoscaler.kube": ("core", "runtime.storage.uri", "runtime.storage.names", "runtime.tracing"),
    # the `elasticserving` CLI also starts the in-cluster controller (`elasticserving controller`);
    # the local platform pulls storageUri models itself
    "autoscaler.local": ("core", "runtime.cli", "runtime.storage", "autoscaler.kube.main", "runtime.tracing"),
}


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[:2] in (("autoscaler", "kube"), ("autoscaler", "local")):
        return ".".join(parts[:2])
    return parts[0]


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m.split(".")[0] in OURS}


def allowed(package: str, module: str) -> bool:
    def under(prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    def core() -> bool:
        return under("autoscaler") and not (under("autoscaler.kube") or under("autoscaler.local"))

    own = core() if package == "autoscaler" else under(package)
    return own or any(core() if p == "core" else under(p) for p in ALLOWED[package])


SOURCES = sorted(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py") if "_pb2" not in p.name)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_stay_within_the_package_boundaries(path):
    package = package_of(path)
    bad = sorted(m for m in imports(path) if not allowed(package, m))
    assert not bad, f"{path.relative_to(ROOT)} ({package}) may not import {bad}"


@pytest.mark.parametrize(("package", "module", "ok"), [
    ("activator", "autoscaler.wire", True),
    ("activator", "autoscaler.controller", False),
    ("runtime", "activator.routing", False),
    ("autoscaler", "autoscaler.kpa", True),
    ("autoscaler", "autoscaler.local.stack", False),
    ("autoscaler.local", "runtime.cli", True),
    ("autoscaler.local", "runtime.server", False),
    ("autoscaler.kube", "autoscaler.local.platform", False),
])
def test_the_rule_itself(package, module, ok):
    assert allowed(package, module) is ok
