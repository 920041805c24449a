"""The Deployment and Service of a side, built from a spec, against golden files: any change to what we
put in the cluster shows as a diff in review. `ELASTICSERVING_UPDATE_GOLDEN=1 pytest` writes them again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoscaler.kube.manifests import build_deployment, build_service
from autoscaler.kube.model_volume import StorageSettings
from autoscaler.spec import PaddleService

GOLDEN = Path(__file__).parent / "golden"
LAC = {"containerImage": "elasticserving/runtime-lac", "tag": "latest", "port": 9292,
       "arg": "python3 -m runtime --model lac --name lac --port $PORT"}
SPECS = {
    "lac": {"default": LAC},
    "canary-rollout": {"default": LAC, "canary": dict(LAC, tag="v2"), "canaryTrafficPercent": 10,
                       "rolloutDuration": "2m", "resources": {"limits": {"memory": "1Gi"}}},
    "s3-model": {"default": {"containerImage": "elasticserving/runtime", "tag": "latest", "port": 8000,
                             "storageUri": "s3://models/own/v1", "storageSecret": "s3-keys"}},
}
STORAGE = StorageSettings(image="elasticserving/runtime:latest", cache_root="/var/cache/elasticserving",
                          cache_max_bytes=10 << 30)


def _svc(name: str) -> PaddleService:
    return PaddleService.from_dict({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
                                    "metadata": {"name": name, "namespace": "models", "uid": "uid-1",
                                                 "labels": {"team": "nlp"}},
                                    "spec": SPECS[name]})


CASES = [(name, side) for name in SPECS for side in _svc(name).sides]


@pytest.mark.parametrize(("name", "side"), CASES, ids=[f"{n}-{s}" for n, s in CASES])
def test_children_match_their_golden_files(name: str, side: str) -> None:
    svc = _svc(name)
    built = {"deployment": build_deployment(svc, side, replicas=1, storage=STORAGE,
                                            replica_env=(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),)),
             "service": build_service(svc, side)}
    path = GOLDEN / f"{name}-{side}.json"
    text = json.dumps(built, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if os.environ.get("ELASTICSERVING_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with ELASTICSERVING_UPDATE_GOLDEN=1 and review it"
    assert json.loads(text) == json.loads(path.read_text()), \
        f"{path.name} differs from what is built now: review the change, then ELASTICSERVING_UPDATE_GOLDEN=1"
