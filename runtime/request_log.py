"""Request IDs and the one log line per inference request: taken from `X-Request-Id` (HTTP) or
`x-request-id` (gRPC metadata) when sane, else made here; `--log-format json` writes one JSON object
per line for every log record, with the request's fields as keys."""

from __future__ import annotations

import json
import logging
import os
import re
import sys

_SANE_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: safe in logs and headers
REQUESTS = logging.getLogger("elasticserving.runtime.requests")


def request_id(incoming: str | None) -> str:
    if incoming and _SANE_ID.match(incoming):
        return incoming
    return os.urandom(16).hex()  # a random 128-bit id like uuid4's, at a tenth of the cost


def log_request(request_id: str, model: str, protocol: str, status: int | str, seconds: float) -> None:
    if REQUESTS.isEnabledFor(logging.INFO):
        fields = {"request_id": request_id, "model": model, "protocol": protocol, "status": status,
                  "duration_ms": round(seconds * 1000, 3)}
        REQUESTS.info("request %s", " ".join(f"{k}={v}" for k, v in fields.items()), extra={"fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        if fields:
            out.update(fields)
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
