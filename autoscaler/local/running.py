"""Which local stacks are running and which ports they hold: `elasticserving up` writes a record
(`stack-<pid>.json`, beside the control API tokens) once its ports are bound and removes it on exit; a
second `up` whose port is taken reads them to say who. A record whose process is gone is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from autoscaler.local.token import default_token_path

MAX_RECORD_BYTES = 16 * 1024
MAX_RECORDS = 64  # read at most this many (a directory full of stale files stays cheap)

# What each of `up`'s ports is called and the flag that chooses it.
PORT_FLAGS = {
    "activator HTTP": "--http-port",
    "gRPC": "--grpc-port",
    "control API": "--control-port",
    "admin": "--admin-port",
    "Prometheus": "--prometheus-port",
}
FREE_PORTS_HINT = "--http-port 0 --grpc-port 0 --control-port 0"


@dataclass(frozen=True)
class StackRecord:
    pid: int
    ports: dict[str, int]  # role (a PORT_FLAGS key) -> port
    files: tuple[str, ...] = ()

    def describe(self) -> str:
        ports = ", ".join(f"{role} {port}" for role, port in self.ports.items())
        files = f"; serving {', '.join(self.files)}" if self.files else ""
        return f"pid {self.pid}: {ports}{files}"


def records_dir() -> Path:
    return default_token_path(0).parent


def record_path(pid: int | None = None, base: Path | None = None) -> Path:
    return (base or records_dir()) / f"stack-{pid or os.getpid()}.json"


def write_record(record: StackRecord, base: Path | None = None) -> None:
    path = record_path(record.pid, base)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"pid": record.pid, "ports": record.ports, "files": list(record.files)}))
    os.replace(tmp, path)


def remove_record(pid: int | None = None, base: Path | None = None) -> None:
    with contextlib.suppress(OSError):
        record_path(pid, base).unlink()


def parse_record(data: bytes) -> StackRecord | None:
    """A record from its file's bytes; None for anything malformed (pure)."""
    try:
        raw = json.loads(data)
        pid, ports = int(raw["pid"]), raw["ports"]
        if not isinstance(ports, dict) or pid <= 0:
            return None
        files = tuple(str(f) for f in raw.get("files") or ())
        return StackRecord(pid, {str(k): int(v) for k, v in ports.items()}, files)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stacks(base: Path | None = None) -> list[StackRecord]:
    """The records of stacks whose process is still there (this process excluded)."""
    out = []
    with contextlib.suppress(OSError):
        for path in sorted((base or records_dir()).glob("stack-*.json"))[:MAX_RECORDS]:
            with contextlib.suppress(OSError), open(path, "rb") as f:
                rec = parse_record(f.read(MAX_RECORD_BYTES))
                if rec is not None and rec.pid != os.getpid() and _alive(rec.pid):
                    out.append(rec)
    return out


def port_taken_message(role: str, host: str, port: int, reason: str, records: list[StackRecord]) -> str:
    """What to tell the user whose `up` cannot bind `port` for `role` (pure): who holds it, and how to
    choose another port."""
    flag = PORT_FLAGS.get(role, "")
    head = f"cannot listen on {host}:{port}: {reason}"
    owner = next((r for r in records if port in r.ports.values()), None)
    if owner is not None:
        return (f"{head}: port {port} ({role}) is held by another ElasticServing stack ({owner.describe()}). "
                f"Stop it (Ctrl-C in its terminal, or `kill {owner.pid}`), or give this one other ports: "
                f"`{FREE_PORTS_HINT}` picks free ones and the \"is up\" line names them.")
    choose = f"choose another with `{flag} PORT` (0: a free port, named in the \"is up\" line)" if flag else \
        "choose another port"
    return f"{head}: another program holds port {port} ({role}); stop it or {choose}."
