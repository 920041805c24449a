"""The `elasticserving` command: `up` runs the local stack; `apply`, `get`, `promote`, `delete`, `logs` talk
to a running one through the autoscaler's control API; `controller` runs the in-cluster control plane."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from autoscaler.local.token import read_token, token_path_for_server
from autoscaler.spec import SpecError

DEFAULT_SERVER = os.environ.get("ELASTICSERVING_SERVER", "http://127.0.0.1:8090")


# The activator's limits (activator/limits.py, `python -m activator --help`), passed through by `up` when
# given; unset, the activator's own defaults hold. tests/autoscaler/test_first_hour.py keeps this list whole.
ACTIVATOR_LIMIT_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("--max-body-bytes", int, "request body (413 beyond)"),
    ("--max-request-line", int, "request line (414 beyond)"),
    ("--max-header-bytes", int, "all request headers (431 beyond)"),
    ("--max-header-fields", int, "request header fields (431 beyond)"),
    ("--max-answer-bytes", int, "a replica's answer (502 beyond)"),
    ("--max-pipelined-bytes", int, "requests read ahead on one connection (reading pauses)"),
    ("--max-buffered-bytes", int, "request and answer bytes held by the activator (503 beyond)"),
    ("--max-connections", int, "open client connections (503 beyond)"),
    ("--header-timeout", float, "seconds a client may take to send the headers (408)"),
    ("--body-timeout", float, "seconds a client may take to send the body (408)"),
    ("--idle-timeout", float, "seconds before an idle keep-alive connection closes"),
    ("--drain-seconds", float, "on Ctrl-C/SIGTERM, at most this long to answer what is held and in flight"),
)


def _positive(type_: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = type_(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not 0 < value < float("inf"):  # NaN included
            raise argparse.ArgumentTypeError(f"must be a positive finite number, not {text}")
        return value

    return parse


def activator_args(args: argparse.Namespace) -> list[str]:
    """The activator's flags `up` passes through: the two it always sets, then the limits given."""
    out = ["--request-timeout", str(args.request_timeout), "--queue-depth", str(args.queue_depth)]
    for flag, _, _ in ACTIVATOR_LIMIT_FLAGS:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            out += [flag, str(value)]
    return out


class ApiError(Exception):
    pass


def _token_file(args: argparse.Namespace) -> Path:
    return Path(args.token_file) if args.token_file else token_path_for_server(args.server)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    token = read_token(_token_file(args))
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return {"Content-Type": "application/json", **auth}


def _request(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(args.server.rstrip("/") + path, data=data, method=method, headers=_headers(args))
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read())
            msg = payload.get("error", str(payload))
        except ValueError:
            msg = str(exc)
        if exc.code == 401:
            msg += f" (token file {_token_file(args)}" + (")" if _token_file(args).exists() else ": missing)")
        raise ApiError(msg) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach the ElasticServing control API at {args.server}: {exc} "
                       "(is `elasticserving up` running?)") from None


def _ready(item: dict[str, Any]) -> str:
    conditions = item.get("status", {}).get("conditions", [])
    return next((c.get("status", "Unknown") for c in conditions if c.get("type") == "Ready"), "Unknown")


RELEASE_SIDES = ("default", "canary", "previous")


def _release(st: dict[str, Any]) -> tuple[str, str, str]:
    """TRAFFIC (the split in force), VERSIONS (image, arg hash, ready replicas per side) and RELEASE
    (reason and since when) of a status."""
    traffic, versions = [], []
    for side in RELEASE_SIDES:
        s = st.get(side)
        if not isinstance(s, dict) or "percent" not in s:
            continue
        traffic.append(f"{side} {s['percent']}%" + (f"->{s['rollout']['toPercent']}%" if s.get("rollout") else ""))
        arg = f"#{s['argHash']}" if s.get("argHash") else ""
        versions.append(f"{side}={s.get('image', '?')}{arg} ({s.get('readyReplicas', 0)} ready)")
    cond = next((c for c in st.get("conditions", []) if c.get("type") == "Released"), None)
    release = f"{cond.get('reason', '')} since {cond.get('lastTransitionTime', '?')}" if cond else ""
    return ", ".join(traffic), "; ".join(versions), release


def format_table(items: list[dict[str, Any]], wide: bool = False) -> str:
    rows = [["NAME", "NAMESPACE", "READY", "REPLICAS", "URL"]]
    if wide:
        rows[0] += ["TRAFFIC", "VERSIONS", "RELEASE", "TAG URLS", "SIDES (desired/ready, concurrency)", "REASON"]
    for it in items:
        md, st = it["metadata"], it.get("status", {})
        row = [md["name"], md.get("namespace", "default"), _ready(it), str(st.get("replicas", 0)), st.get("url", "")]
        if wide:
            sides = []
            for side, a in (it.get("autoscaler") or {}).items():
                panic = " PANIC" if a.get("in_panic") else ""
                standby = f" +{a['standby']} standby" if a.get("standby") else ""
                sides.append(f"{side} {a['desired']}/{a['ready']}{standby} c={a['stable_concurrency']:.2f}{panic}")
            reason = next((c.get("message", "") for c in st.get("conditions", [])
                           if c.get("type") in ("Ready", "Released") and c.get("status") != "True"), "")
            tags = ", ".join(st[t]["url"] for t in ("default", "canary") if isinstance(st.get(t), dict)
                             and st[t].get("url"))
            row += [*_release(st), tags, "; ".join(sides), reason]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_up(args: argparse.Namespace) -> int:
    from autoscaler.local.stack import StackOptions, up

    return up(StackOptions(
        files=args.file, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
        control_port=args.control_port, admin_port=args.admin_port, log_format=args.log_format,
        domain=args.domain, config=args.config, log_dir=args.log_dir, tick_seconds=args.tick_seconds,
        ready_timeout=args.replica_ready_timeout, prewarm=args.prewarm,
        prewarm_ready_timeout=args.prewarm_ready_timeout, token_file=args.token_file,
        prometheus_port=args.prometheus_port if args.prometheus else None, allowed_hosts=args.allow_host,
        model_cache=args.model_cache, activator_args=activator_args(args)))


def cmd_apply(args: argparse.Namespace) -> int:
    from autoscaler.local.stack import load_files

    for svc in load_files(args.file, {}):
        item = _request(args, "POST", "/v1/paddleservices", svc.to_manifest())
        print(f"paddleservice/{item['metadata']['name']} applied ({svc.key})")
    return 0


def _items(args: argparse.Namespace) -> list[dict[str, Any]]:
    items = _request(args, "GET", "/v1/paddleservices")["items"]
    if args.namespace:
        items = [i for i in items if i["metadata"].get("namespace") == args.namespace]
    if args.name:
        items = [i for i in items if i["metadata"]["name"] == args.name]
        if not items:
            raise ApiError(f"paddleservice {args.name!r} not found")
    return items


def cmd_get(args: argparse.Namespace) -> int:
    if args.output == "json":
        print(json.dumps(_items(args), indent=2, ensure_ascii=False))
    elif not args.watch:
        print(format_table(_items(args), wide=args.output == "wide"))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                table = format_table(_items(args), wide=True)
                sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S") + "\n" + table + "\n")
                sys.stdout.flush()
                time.sleep(args.interval)
    return 0


def _namespace_of(args: argparse.Namespace) -> str:
    """The namespace of the one PaddleService named `args.name` (in `-n`, or the only one of that name)."""
    items = _items(args)
    if len(items) > 1:
        raise ApiError(f"paddleservice {args.name!r} exists in several namespaces: give -n NAMESPACE")
    return items[0]["metadata"]["namespace"]


def cmd_promote(args: argparse.Namespace) -> int:
    ns = _namespace_of(args)
    item = _request(args, "POST", f"/v1/paddleservices/{ns}/{args.name}/promote", {})
    traffic, _, release = _release(item.get("status", {}))
    print(f"paddleservice/{args.name} promoted ({ns}/{args.name}): {traffic} ({release})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    ns = _namespace_of(args)
    _request(args, "DELETE", f"/v1/paddleservices/{ns}/{args.name}")
    print(f"paddleservice/{args.name} deleted ({ns}/{args.name})")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    """The replicas' output of one side, `[replica] line` per line; -f keeps following."""
    ns = _namespace_of(args)
    query = urllib.parse.urlencode({"side": args.side, "follow": "1" if args.follow else "0",
                                    **({"tail": str(args.tail)} if args.tail is not None else {})})
    url = f"{args.server.rstrip('/')}/v1/paddleservices/{ns}/{args.name}/logs?{query}"
    req = urllib.request.Request(url, headers=_headers(args))
    try:
        # Following has no read deadline: lines come when the replicas print them.
        with urllib.request.urlopen(req, timeout=None if args.follow else 30) as resp:
            for line in resp:
                sys.stdout.write(line.decode("utf-8", "replace"))
                sys.stdout.flush()
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            msg = str(exc)
        raise ApiError(msg) from None
    except KeyboardInterrupt:
        return 0
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach the ElasticServing control API at {args.server}: {exc}") from None
    return 0


def cmd_controller(args: argparse.Namespace) -> int:
    from autoscaler.kube.main import main as run_kube_controller  # --platform has one choice: kubernetes

    return run_kube_controller(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="elasticserving", description="Serverless model serving: PaddleService on "
                                "a laptop (local platform) or on Kubernetes.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the local stack in the foreground and serve PaddleService files")
    up.add_argument("-f", "--file", action="append", required=True, help="PaddleService YAML (repeatable)")
    up.add_argument("--host", default="127.0.0.1", help="address the activator listens on")
    up.add_argument("--http-port", type=int, default=8080, help="the activator's HTTP port (0: a free port; "
                    "the \"is up\" line names the ports taken)")
    up.add_argument("--grpc-port", type=int, default=8081, help="the activator's gRPC port (0: a free port)")
    up.add_argument("--control-port", type=int, default=8090, help="control API port (loopback; 0: a free port)")
    up.add_argument("--admin-port", type=int, default=0, help="the activator's /metrics, /healthz, /ready "
                    "(loopback; default 0: a free port, named in the \"is up\" line)")
    up.add_argument("--log-format", choices=["text", "json"], default="text",
                    help="the activator's and the replicas' log lines (request lines included): text, or one "
                    "JSON object per line")
    up.add_argument("--domain", default="example.com")
    up.add_argument("--config", help="YAML of autoscaler defaults (Knative config-autoscaler keys)")
    up.add_argument("--log-dir", default=os.environ.get("ELASTICSERVING_LOG_DIR"),
                    help="write each replica's output to DIR/<replica>.log")
    up.add_argument("--request-timeout", type=float, default=60.0,
                    help="seconds a request may wait and run before the activator answers 503")
    up.add_argument("--queue-depth", type=int, default=1000, help="requests held per service while at zero")
    up.add_argument("--replica-ready-timeout", type=float, default=120.0,
                    help="seconds a replica may take to turn ready before it counts as failed")
    up.add_argument("--prewarm", action=argparse.BooleanOptionalAction, default=False,
                    help="fork replicas of our runtime from a pre-warmed launcher (sub-second scale from zero)")
    up.add_argument("--prewarm-ready-timeout", type=float, default=10.0,
                    help="seconds a pre-warmed replica may take to turn ready before it is started plainly")
    up.add_argument("--prometheus", action="store_true",
                    help="also run a local Prometheus (Debian package `prometheus`) scraping the stack")
    up.add_argument("--prometheus-port", type=int, default=9090)
    up.add_argument("--token-file", default=os.environ.get("ELASTICSERVING_TOKEN_FILE"),
                    help="write the control API token here (default: $XDG_RUNTIME_DIR or ~/.cache/"
                    "elasticserving/control-PORT.token)")
    up.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="also accept this Host name on the control API (default: loopback names only)")
    up.add_argument("--model-cache", default=None, metavar="DIR",
                    help="where storageUri models are cached (default: $ELASTICSERVING_MODEL_CACHE or "
                         "~/.cache/elasticserving/model-cache)")
    limits = up.add_argument_group("the activator's limits (default: the activator's own, see "
                                   "`python -m activator --help`)")
    for flag, type_, help_ in ACTIVATOR_LIMIT_FLAGS:
        limits.add_argument(flag, type=_positive(type_), default=None, help=help_)
    up.add_argument("--tick-seconds", type=float, default=2.0, help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    def client(name: str, func: Any, help_: str, named: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        sp.add_argument("--server", default=DEFAULT_SERVER, help="control API of a running stack")
        sp.add_argument("--token-file", default=os.environ.get("ELASTICSERVING_TOKEN_FILE"),
                        help="the stack's control API token (default: the file `up` wrote for --server's port)")
        if named:
            sp.add_argument("name")
            sp.add_argument("-n", "--namespace")
        return sp

    ap = client("apply", cmd_apply, "create or update PaddleServices in a running local stack", named=False)
    ap.add_argument("-f", "--file", action="append", required=True)

    gp = client("get", cmd_get, "list PaddleServices (NAME, READY, REPLICAS, URL)", named=False)
    gp.add_argument("name", nargs="?")
    gp.add_argument("-n", "--namespace", help="only this namespace (default: all)")
    gp.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table")
    gp.add_argument("-w", "--watch", action="store_true", help="refresh every second with live replicas")
    gp.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)

    client("promote", cmd_promote, "make the canary the default (refused while the canary has no ready replica); "
           "with spec.rolloutDuration the traffic moves over gradually")

    client("delete", cmd_delete, "delete a PaddleService from a running local stack")

    lp = client("logs", cmd_logs, "print the output of a service's local replicas (as kubectl logs)")
    lp.add_argument("--side", choices=list(RELEASE_SIDES), default="default")
    lp.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    lp.add_argument("--tail", type=int, help="only the last N lines kept")

    cp = sub.add_parser("controller", help="run the in-cluster controller + autoscaler")
    cp.add_argument("--platform", choices=["kubernetes"], default="kubernetes")
    cp.add_argument("rest", nargs=argparse.REMAINDER)
    cp.set_defaults(func=cmd_controller)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, ApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, SpecError) else 1


if __name__ == "__main__":
    sys.exit(main())
