"""End to end on the local platform: `elasticserving up` with the real LAC model, through the real
activator, autoscaler and runtime processes on loopback (the README's flow)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import ROOT, paddleservice, replica_ids, replica_pids, start_stack, wait_for, write_yaml

LAC_HOST = "paddleservice-sample.paddleservice-system.example.com"
LAC_KEY = "paddleservice-system/paddleservice-sample"
REQUEST = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}
RUNTIME = "python3 -m runtime --model lac --name lac --port $PORT"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    extra = write_yaml(
        tmp / "more.yaml",
        paddleservice("lac-dash", "paddleservice-system", RUNTIME + " --seg-separator -", minScale=0, window="6s"),
        paddleservice("broken", "default", "echo 'model file is corrupt' >&2; exit 3", minScale=0),
        paddleservice("hangs", "default", "sleep 600", minScale=0),
    )
    s = start_stack(tmp, [ROOT / "examples/lac.yaml", extra],
                    config={"scale-to-zero-grace-period": "2s"},
                    extra=["--request-timeout", "20", "--replica-ready-timeout", "8"])
    yield s
    code = s.stop()
    assert code == 0, "\n".join(s.output[-30:])


def lac_answer(stack, host=LAC_HOST, body=REQUEST, timeout=60.0):
    status, headers, data = stack.request(host, "/lac/prediction", body, timeout=timeout)
    return status, json.loads(data)


def test_cold_start_from_zero_answers_exactly(stack):
    assert stack.service(LAC_KEY)["status"]["replicas"] == 0
    assert replica_pids(LAC_KEY) == []
    status, body = lac_answer(stack)
    assert status == 200, body
    assert body == {"result": [{"word_seg": "我|爱|北京|天安门"}]}
    assert stack.service(LAC_KEY)["status"]["replicas"] == 1
    assert len(replica_pids(LAC_KEY)) >= 1


def test_batch_of_feed_items(stack):
    body = {"feed": [{"words": "我爱北京天安门"}, {"words": "百度是一家高科技公司"}], "fetch": ["word_seg"]}
    status, out = lac_answer(stack, body=body)
    assert status == 200, out
    assert len(out["result"]) == 2
    assert out["result"][0]["word_seg"] == "我|爱|北京|天安门"
    assert "".join(out["result"][1]["word_seg"].split("|")) == "百度是一家高科技公司"


def test_two_services_routed_by_host(stack):
    with ThreadPoolExecutor(4) as pool:
        a = pool.submit(lac_answer, stack)
        b = pool.submit(lac_answer, stack, "lac-dash.paddleservice-system.example.com")
        (sa, ba), (sb, bb) = a.result(), b.result()
    assert (sa, sb) == (200, 200), (ba, bb)
    assert ba["result"][0]["word_seg"] == "我|爱|北京|天安门"
    assert bb["result"][0]["word_seg"] == "我-爱-北京-天安门"


def test_unknown_host_is_404_naming_it(stack):
    status, _, data = stack.request("nope.nowhere.example.com", "/lac/prediction", REQUEST)
    assert status == 404
    assert "nope.nowhere.example.com" in json.loads(data)["error"]


def test_malformed_json_and_missing_words_are_400(stack):
    lac_answer(stack)  # make sure a replica is up
    status, _, data = stack.request(LAC_HOST, "/lac/prediction", raw=b"{not json")
    assert status == 400 and "error" in json.loads(data)
    status, _, data = stack.request(LAC_HOST, "/lac/prediction", {"feed": [{"text": "x"}], "fetch": ["word_seg"]})
    assert status == 400 and "words" in json.loads(data)["error"]


def test_replica_that_exits_gives_503_with_reason(stack):
    t0 = time.monotonic()
    status, _, data = stack.request("broken.default.example.com", "/lac/prediction", REQUEST, timeout=60)
    assert status == 503
    assert time.monotonic() - t0 < 25
    text = data.decode()
    assert "exit code 3" in text, text
    item = stack.service("default/broken")
    ready = [c for c in item["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "False" and "exit code 3" in ready["message"]
    out = stack.cli("get", "broken")
    assert out.returncode == 0 and "False" in out.stdout


def test_replica_never_ready_gives_503_within_deadline(stack):
    t0 = time.monotonic()
    status, _, data = stack.request("hangs.default.example.com", "/lac/prediction", REQUEST, timeout=60)
    assert status == 503, data
    assert time.monotonic() - t0 < 25
    assert b"not ready" in data or b"timed out" in data or b"deadline" in data, data


def test_cli_get_apply_delete(stack, tmp_path):
    out = stack.cli("get")
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:5] == ["NAME", "NAMESPACE", "READY", "REPLICAS", "URL"]
    assert "http://paddleservice-sample.paddleservice-system.example.com" in out.stdout
    f = write_yaml(tmp_path / "x.yaml", paddleservice("extra", "default", RUNTIME, minScale=0))
    out = stack.cli("apply", "-f", str(f))
    assert out.returncode == 0, out.stderr
    assert "extra" in stack.cli("get").stdout
    out = stack.cli("delete", "extra")
    assert out.returncode == 0, out.stderr
    assert "extra" not in stack.cli("get").stdout


def test_cli_logs_prints_and_follows_replica_output(stack, tmp_path):
    """`elasticserving logs NAME -f`: started before any replica, it prints the replica's stdout and
    stderr as they come, then ends when the service is deleted; without -f it prints what is kept."""
    echo = f"{sys.executable} {ROOT}/tests/fixtures/echo_replica.py"
    arg = f"echo hello from $ELASTICSERVING_REPLICA; echo to-stderr >&2; exec {echo}"
    f = write_yaml(tmp_path / "talk.yaml", paddleservice("talk", "default", arg, minScale=0))
    assert stack.cli("apply", "-f", str(f)).returncode == 0
    follow = subprocess.Popen([sys.executable, "-m", "autoscaler.local.cli", "logs", "talk", "-f", "--server",
                               stack.control, "--token-file", str(stack.token_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follow.stdout), daemon=True)
        reader.start()
        f.write_text(f.read_text().replace("minScale: 0", "minScale: 1"))
        assert stack.cli("apply", "-f", str(f)).returncode == 0  # a replica starts and prints
        wait_for(lambda: any("to-stderr" in x for x in lines) and any("hello from" in x for x in lines), 60,
                 0.1, "the replica's output, followed")
        assert any(x.startswith("[default-talk-default-") and "hello from default-talk-default-" in x
                   for x in lines), lines
        out = stack.cli("logs", "talk", "-n", "default", "--tail", "5")
        assert out.returncode == 0 and "to-stderr" in out.stdout, out.stderr
        assert stack.cli("delete", "talk").returncode == 0
        assert follow.wait(30) == 0  # the side is gone: following ends
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    out = stack.cli("logs", "talk")
    assert out.returncode == 1 and "not found" in out.stderr


@pytest.mark.parametrize(
    "text, field",
    [
        ("a: [1, 2", "invalid YAML"),
        ("apiVersion: elasticserving.paddlepaddle.org/v1\nkind: PaddleService\nmetadata: {name: x}\nspec: {}\n",
         "spec.default"),
        ("apiVersion: elasticserving.paddlepaddle.org/v1\nkind: PaddleService\nmetadata: {name: x}\n"
         "spec: {default: {tag: v, port: 1}}\n", "spec.default.containerImage"),
    ],
)
def test_cli_refuses_bad_files_naming_the_field(stack, tmp_path, text, field):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    out = stack.cli("apply", "-f", str(f))
    assert out.returncode == 2
    assert field in out.stderr


def test_scales_back_to_zero_after_idle(stack):
    status, _ = lac_answer(stack)
    assert status == 200
    # window 10s + grace 2s + ticks: the replica is stopped, its process gone.
    wait_for(lambda: stack.service(LAC_KEY)["status"]["replicas"] == 0, 40, 0.2, "scale to zero")
    wait_for(lambda: replica_pids(LAC_KEY) == [], 20, 0.2, "replica processes to exit")
    status, body = lac_answer(stack)  # and it comes back
    assert status == 200 and body["result"][0]["word_seg"] == "我|爱|北京|天安门"


def test_bad_file_refused_by_up(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: elasticserving.paddlepaddle.org/v1\nkind: PaddleService\n"
                 "metadata: {name: x}\nspec: {default: {containerImage: i, tag: t}}\n")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "autoscaler.local.cli", "up", "-f", str(f)], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 2
    assert "spec.default.port" in out.stderr


def test_ctrl_c_stops_every_replica(tmp_path: Path):
    f = write_yaml(tmp_path / "one.yaml", paddleservice("keep", "ctrlc", RUNTIME, minScale=2))
    s = start_stack(tmp_path, [f])
    try:
        wait_for(lambda: s.service("ctrlc/keep")["status"]["replicas"] == 2, 120, 0.2, "2 ready replicas")
        assert len(replica_ids("ctrlc/keep")) == 2
    finally:
        code = s.stop(signal.SIGINT)
    assert code == 0
    wait_for(lambda: replica_pids("ctrlc/keep") == [], 10, 0.1, "no orphan replica processes")
