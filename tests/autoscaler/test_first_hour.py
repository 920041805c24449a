"""Issue 28's pure pieces, table-driven: who holds a port and what `up` says about it, the spec's "did you
mean", the unknown-Host hint, the link's log level at an announced shutdown, `up`'s pass-through flags,
the zygote kind of a side's command, image errors without Python reprs."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import subprocess
import sys

import pytest

from activator.autoscaler_link import ANNOUNCED_ABSENCE_SECONDS, absence_level
from activator.limits import FrontLimits
from activator.main import parse_args as activator_args_parser
from activator.routing import RouteTable
from autoscaler.local import running
from autoscaler.local.cli import ACTIVATOR_LIMIT_FLAGS, activator_args, build_parser
from autoscaler.local.prewarm import warm_kind
from autoscaler.local.running import StackRecord, parse_record, port_taken_message
from autoscaler.local.stack import PortTaken, StackOptions, load_files, reserved_port, stack_ports
from autoscaler.spec import PaddleService, SpecError, did_you_mean, known_fields, load_paddleservices
from autoscaler.wire import Route, SideRoute
from runtime.errors import BadInput
from runtime.handlers.image_input import open_image, plain_reason
from tests.helpers import ROOT, paddleservice

PYTHON_NAMES = ("object at 0x", "Traceback", "BytesIO", "Error:", "NoneType", "<class ", "EndpointSpec",
                "dictionary")

# ---- ports -----------------------------------------------------------------------------------
OTHER = StackRecord(4242, {"activator HTTP": 8080, "gRPC": 8081, "control API": 8090, "admin": 40000},
                    ("examples/lac.yaml",))


@pytest.mark.parametrize("role,port,records,must,must_not", [
    ("activator HTTP", 8080, [OTHER], ["pid 4242", "activator HTTP 8080", "gRPC 8081", "control API 8090",
                                       "admin 40000", "examples/lac.yaml", "kill 4242",
                                       "--http-port 0 --grpc-port 0 --control-port 0"], ["another program"]),
    ("control API", 8090, [OTHER], ["port 8090 (control API) is held by another ElasticServing stack"], []),
    ("gRPC", 9999, [OTHER], ["another program holds port 9999 (gRPC)", "`--grpc-port PORT`"], ["pid 4242"]),
    ("activator HTTP", 8080, [], ["another program holds port 8080", "`--http-port PORT`", "0: a free port"],
     []),
    ("admin", 7, [], ["`--admin-port PORT`"], []),
])
def test_port_taken_message(role, port, records, must, must_not):
    msg = port_taken_message(role, "127.0.0.1", port, "Address already in use", records)
    assert msg.startswith(f"cannot listen on 127.0.0.1:{port}: Address already in use")
    for text in must:
        assert text in msg, msg
    for text in must_not:
        assert text not in msg, msg
    assert "Errno" not in msg


@pytest.mark.parametrize("data,expected", [
    (b'{"pid": 12, "ports": {"gRPC": 81}, "files": ["a.yaml"]}', StackRecord(12, {"gRPC": 81}, ("a.yaml",))),
    (b'{"pid": 12, "ports": {}}', StackRecord(12, {}, ())),
    (b'{"pid": 0, "ports": {}}', None),
    (b'{"pid": "x", "ports": {}}', None),
    (b'{"pid": 12, "ports": [1]}', None),
    (b'{"pid": 12, "ports": {"a": "b"}}', None),
    (b"[]", None),
    (b"\xff", None),
    (b"", None),
])
def test_parse_record(data, expected):
    assert parse_record(data) == expected


def test_running_stacks_are_live_processes_other_than_this_one(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        for pid in (int(dead.stdout), live.pid, os.getpid()):
            running.write_record(StackRecord(pid, {"control API": pid % 60000}), tmp_path)
        (tmp_path / "stack-99.json").write_text("not json")
        assert [r.pid for r in running.running_stacks(tmp_path)] == [live.pid]
        running.remove_record(live.pid, tmp_path)
        assert running.running_stacks(tmp_path) == []
    finally:
        live.communicate(b"")


def test_port_taken_explains_with_the_records_of_running_stacks(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        running.write_record(StackRecord(holder.pid, {"activator HTTP": 18080}))
        assert (tmp_path / "elasticserving" / f"stack-{holder.pid}.json").is_file()
        msg = PortTaken(98, "127.0.0.1", 18080, "Address already in use", "activator HTTP").explain()
        assert f"pid {holder.pid}" in msg and "Stop it" in msg, msg
    finally:
        holder.communicate(b"")


def test_reserved_port_refuses_a_port_another_stack_reserved():
    """Both reservations set SO_REUSEPORT: without the plain bind first, a second stack of the same user
    would share the first one's gRPC port silently."""
    first = reserved_port("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(PortTaken, match=f"cannot listen on 127.0.0.1:{port}: Address already in use") as err:
            reserved_port("127.0.0.1", port)
        assert err.value.role == "gRPC" and err.value.port == port
    finally:
        first.close()
    with socket.socket() as probe:  # closed: the port is free again
        probe.bind(("127.0.0.1", port))


def test_stack_ports_name_every_port_the_up_line_names():
    opts = StackOptions(files=[], http_port=1, grpc_port=2, control_port=3, admin_port=4, prometheus_port=5)
    assert stack_ports(opts) == {"activator HTTP": 1, "gRPC": 2, "control API": 3, "admin": 4, "Prometheus": 5}
    assert set(stack_ports(opts)) <= set(running.PORT_FLAGS)


# ---- the spec's errors -------------------------------------------------------------------------
@pytest.mark.parametrize("name,known,hint", [
    ("minScal", ["minScale", "maxScale"], ", did you mean `minScale`?"),
    ("defualt", ["default", "canary"], ", did you mean `default`?"),
    ("MINSCALE", ["minScale"], ", did you mean `minScale`?"),
    ("zzz", ["minScale"], ""),
    ("x", [], ""),
])
def test_did_you_mean(name, known, hint):
    assert did_you_mean(name, known) == hint


def _doc(**spec_patch):
    doc = paddleservice("a", "default", "python3 -m runtime --model lac --port $PORT", minScale=0)
    doc["spec"].update(spec_patch)
    return doc


def _without(doc, *path):
    d = doc
    for p in path[:-1]:
        d = d[p]
    d[path[-1] + "x"] = d.pop(path[-1])
    return doc


@pytest.mark.parametrize("doc,message", [
    ({**_doc(), "spec": {"defualt": _doc()["spec"]["default"]}},
     "spec.defualt: unknown field `defualt`, did you mean `default`?"),
    (_doc(service={"minScal": 1}), "spec.service.minScal: unknown field `minScal`, did you mean `minScale`?"),
    (_doc(canaryTraficPercent=5),
     "spec.canaryTraficPercent: unknown field `canaryTraficPercent`, did you mean `canaryTrafficPercent`?"),
    ({k: v for k, v in {**_doc(), "spce": _doc()["spec"]}.items() if k != "spec"},
     "spce: unknown field `spce`, did you mean `spec`?"),
    (_doc(default={**_doc()["spec"]["default"], "argg": "x"}),
     "spec.default.argg: unknown field `argg`, did you mean `arg`?"),
    (_doc(default={**_doc()["spec"]["default"], "zzzz": "x"}), "spec.default.zzzz: unknown field `zzzz`"),
    (_doc(default="a string"), "spec.default: Input should be a mapping"),
    ({k: v for k, v in _doc().items() if k != "spec"}, "spec: field required"),
    ([1], "a PaddleService must be a mapping, got a list"),
])
def test_spec_errors_say_how_to_fix_them(doc, message):
    with pytest.raises(SpecError) as err:
        PaddleService.from_dict(doc)
    assert str(err.value) == message
    for name in PYTHON_NAMES:
        assert name not in str(err.value)


@pytest.mark.parametrize("loc,fields", [
    ((), ["apiVersion", "kind", "metadata", "spec", "status"]),
    (("spec", "service"), None),  # checked below: ServiceSpec's fields
    (("spec", "default", "port"), []),  # not a model
    (("spec", "nonexistent"), []),
    (("metadata", "annotations"), []),
])
def test_known_fields(loc, fields):
    if fields is None:
        assert "minScale" in known_fields(loc) and "window" in known_fields(loc)
    else:
        assert known_fields(loc) == fields


def test_a_file_path_is_printed_once(tmp_path):
    f = tmp_path / "svc.yaml"
    f.write_text("apiVersion: elasticserving.paddlepaddle.org/v1\nkind: PaddleService\nmetadata: {name: a}\n"
                 "spec:\n  default: {containerImage: x, tag: y, port: 1}\n  service: {minScal: 0}\n---\n"
                 "kind: PaddleService\n")
    with pytest.raises(SpecError) as err:
        load_files([str(f)], {})
    text = str(err.value)
    assert text.count(str(f)) == 1 and text.count("spec.service.minScal") == 1, text
    assert text.startswith(f"{f}: document 1: spec.service.minScal: unknown field `minScal`"), text
    with pytest.raises(SpecError) as err:
        load_paddleservices("kind: PaddleService\n")
    assert str(err.value) == "spec: field required"


# ---- the unknown Host ------------------------------------------------------------------------
def _route(name: str, ns: str = "default") -> Route:
    host = f"{name}.{ns}.example.com"
    return Route(service=f"{ns}/{name}", name=name, namespace=ns, hosts=(host, f"{name}.{ns}"), sides={"default": SideRoute()},
                 tags={"default": (f"default-{host}",)})


TABLE = RouteTable([_route("echo"), _route("paddleservice-sample", "paddleservice-system"), _route("image")])


@pytest.mark.parametrize("host,closest", [
    ("echo.default.example.co", ["echo.default.example.com"]),
    ("ECHO.default.example.cmo:8080", ["echo.default.example.com"]),
    ("paddleservice-sample.example.com", ["paddleservice-sample.paddleservice-system.example.com"]),
    ("echo.defualt", ["echo.default"]),
    ("nothing-like-it.org", []),
    ("", []),
    (None, []),
    ("x" * 100_000, []),
])
def test_closest_hosts(host, closest):
    assert TABLE.closest_hosts(host, n=1) == closest


@pytest.mark.parametrize("table,host,hint", [
    (TABLE, "echo.default.example.co", "; did you mean 'echo.default.example.com'"),
    (TABLE, "nothing-like-it.org", ""),  # a public door: no list of the services for a random host
    (RouteTable([_route(f"s{i}") for i in range(5)]), "zz", ""),
    (RouteTable(), "echo.default.example.com", "; no PaddleService is served here yet"),
])
def test_unknown_host_hint(table, host, hint):
    assert table.unknown_host_hint(host) == hint or (hint and table.unknown_host_hint(host).startswith(hint))


# ---- the link at an announced shutdown -----------------------------------------------------------
@pytest.mark.parametrize("announced_at,now,level", [
    (None, 100.0, logging.WARNING),  # gone without a word
    (100.0, 100.5, logging.DEBUG),  # said it is shutting down
    (100.0, 100.0 + ANNOUNCED_ABSENCE_SECONDS - 0.1, logging.DEBUG),
    (100.0, 100.0 + ANNOUNCED_ABSENCE_SECONDS, logging.WARNING),  # away longer than a restart takes
])
def test_absence_level(announced_at, now, level):
    assert absence_level(announced_at, now) == level


# ---- up's flags ---------------------------------------------------------------------------------
def test_up_passes_every_activator_limit_through():
    limit_flags = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(FrontLimits)}
    ours = {flag for flag, _, _ in ACTIVATOR_LIMIT_FLAGS}
    assert ours == limit_flags | {"--drain-seconds"}
    args = build_parser().parse_args(["up", "-f", "x.yaml", "--max-body-bytes", "1024", "--header-timeout", "2.5",
                                      "--log-format", "json", "--admin-port", "0"])
    passed = activator_args(args)
    assert passed[:4] == ["--request-timeout", "60.0", "--queue-depth", "1000"]
    assert passed[4:] == ["--max-body-bytes", "1024", "--header-timeout", "2.5"]
    parsed = activator_args_parser(["--log-format", args.log_format, *passed])  # the activator takes them
    assert parsed.limits.max_body_bytes == 1024 and parsed.limits.header_timeout == 2.5
    assert parsed.log_format == "json"


@pytest.mark.parametrize("argv", [
    ["--max-body-bytes", "0"], ["--max-body-bytes", "-5"], ["--max-body-bytes", "x"],
    ["--header-timeout", "nan"], ["--header-timeout", "inf"], ["--log-format", "xml"],
])
def test_up_refuses_bad_limits_before_starting(argv, capsys):
    with pytest.raises(SystemExit) as err:
        build_parser().parse_args(["up", "-f", "x.yaml", *argv])
    assert err.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# ---- pre-warming ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd,kind", [
    ("python3 -m runtime --model lac --name lac --port $PORT", "paddle"),
    ("python3 -m runtime --model efficientnet-lite0 --backend onnx --handler imagenet --port $PORT", "onnx"),
    ("python3 -m runtime --model efficientnet-lite0 --backend paddle --handler imagenet --port $PORT", "paddle"),
    ("exec python3 -m runtime --model $MODEL_DIR --backend onnx --port $PORT", "onnx"),
    ("python3 -m runtime --model x --backend tensorflow --port $PORT", None),
    (f"{sys.executable} tests/fixtures/echo_replica.py", None),
    ("python3 -m runtime --port $PORT | tee log", None),
])
def test_warm_kind(cmd, kind):
    assert warm_kind(cmd) == kind


# ---- image errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, b"GIF89a", b"\xff\xd8\xff"])
def test_undecodable_images_say_so_without_python_names(data):
    with pytest.raises(BadInput) as err:
        open_image(data, 1 << 20)
    assert "undecodable image" in str(err.value) or "image" in str(err.value)
    for name in PYTHON_NAMES:
        assert name not in str(err.value), str(err.value)


@pytest.mark.parametrize("exc,text", [
    (OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1b2d40>"),
     "cannot identify image file the data"),
    (ValueError("x" * 1000), "x" * 200),
    (OSError(""), ""),
])
def test_plain_reason(exc, text):
    assert plain_reason(exc) == text


def test_up_help_runs():
    out = subprocess.run([sys.executable, "-m", "autoscaler.local.cli", "up", "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and "--admin-port" in out.stdout and "--max-body-bytes" in out.stdout
    assert isinstance(build_parser(), argparse.ArgumentParser)
