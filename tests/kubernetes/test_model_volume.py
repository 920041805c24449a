"""The Pod pieces of a storageUri side, table-driven and without servers: pvc:// mounts the claim;
s3:// and http(s):// get the storage-initializer (beside our runtime, else an init container), the node cache (this namespace's
directory only, read-only in the model container) and the Secret's AWS_* keys by reference; a failed
pull's termination message is the side's reason, as condition ModelPullFailed."""

from __future__ import annotations

import pytest

from autoscaler.kube.manifests import build_deployment
from autoscaler.kube.model_volume import STORAGE_INITIALIZER, StorageSettings
from autoscaler.kube.observed import pod_failure
from autoscaler.spec import PaddleService

SETTINGS = StorageSettings(image="elasticserving/runtime:latest", cache_root="/var/cache/es", cache_max_bytes=10)


def _svc(**side: object) -> PaddleService:
    return PaddleService.from_dict({
        "apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
        "metadata": {"name": "iris", "namespace": "team-a", "uid": "u-1"},
        "spec": {"default": {"containerImage": "elasticserving/runtime", "tag": "latest", "port": 9292, **side}}})


def _pod_spec(svc: PaddleService) -> dict:
    return build_deployment(svc, "default", storage=SETTINGS)["spec"]["template"]["spec"]


def test_without_a_storage_uri_nothing_is_added():
    pod = _pod_spec(_svc(arg="python3 -m runtime --model lac --port $PORT"))
    assert "initContainers" not in pod and "volumes" not in pod
    assert "volumeMounts" not in pod["containers"][0]


def test_s3_gets_the_init_container_the_namespace_cache_and_the_secret_by_reference():
    pod = _pod_spec(_svc(storageUri="s3://models/iris/", storageSecret="s3-creds", storageSha256=None))
    assert "initContainers" not in pod
    (main, init) = pod["containers"]  # our runtime: the initializer runs beside it
    assert init["name"] == STORAGE_INITIALIZER and init["image"] == "elasticserving/runtime:latest"
    assert init["command"] == ["python3", "-m", "runtime.storage"]
    assert init["args"][:5] == ["s3://models/iris/", "--cache", "/var/cache/es/team-a", "--dest", "/mnt/models"]
    keys = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"]}
    assert keys["AWS_SECRET_ACCESS_KEY"] == {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}
    assert "AWS_ENDPOINT_URL" in keys and all("value" not in e for e in init["env"])
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/mnt/models"]["readOnly"] and mounts["/var/cache/es/team-a"]["subPath"] == "team-a"
    # our runtime waits for the pull itself: the initializer hands over and stays; it alone writes the model
    assert init["args"][-1] == "--stay"
    assert {m["name"]: m["readOnly"] for m in main["volumeMounts"]} == \
        {"model": True, "model-cache": True, "pull-report": False}  # the report's FIFO may be made by either
    assert {"name": "MODEL_DIR", "value": "/mnt/models"} in main["env"]
    assert main["args"] == ["exec python3 -m runtime --model $MODEL_DIR --name iris --port $PORT"]
    # the model container itself never sees the Secret
    assert all("valueFrom" not in e or "secretKeyRef" not in e["valueFrom"] for e in main["env"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["hostPath"] == {"path": "/var/cache/es", "type": "DirectoryOrCreate"}


@pytest.mark.parametrize(("arg", "beside"), [
    (None, True),
    ("python3 -m runtime --model $MODEL_DIR --name iris --port $PORT --max-batch-size 8", True),
    ("exec python -m runtime --model $MODEL_DIR --port $PORT", True),
    ("my-server --dir $MODEL_DIR --port $PORT", False),
    ("python3 -m runtime_of_mine --dir $MODEL_DIR", False),
])
def test_only_our_runtime_starts_beside_the_pull(arg, beside):
    """Another server expects its model in place when it starts: a plain init container, run to the end."""
    pod = _pod_spec(_svc(storageUri="s3://models/iris/", arg=arg))
    (init,) = pod["containers"][1:] if beside else pod["initContainers"]
    assert init["name"] == STORAGE_INITIALIZER and ("--stay" in init["args"]) == beside
    assert ("initContainers" in pod) is not beside and len(pod["containers"]) == (2 if beside else 1)
    report_mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "pull-report")
    assert report_mount["readOnly"] is not beside


def test_a_given_sha256_is_passed_and_http_needs_no_secret():
    pod = _pod_spec(_svc(storageUri="https://models.example.com/iris.tar.gz", storageSha256="ab" * 32))
    init = pod["containers"][1]
    assert init["args"][-3:] == ["--sha256", "ab" * 32, "--stay"] and init["env"] == []


@pytest.mark.parametrize(("uri", "claim", "sub"), [
    ("pvc://model-store/iris/v1", "model-store", "iris/v1"),
    ("pvc://model-store", "model-store", None),
])
def test_pvc_mounts_the_claim_read_only_without_an_init_container(uri, claim, sub):
    pod = _pod_spec(_svc(storageUri=uri, arg="my-server --dir $MODEL_DIR"))
    assert "initContainers" not in pod
    assert pod["volumes"] == [{"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/mnt/models" and mount["readOnly"] and mount.get("subPath") == sub
    assert pod["containers"][0]["args"] == ["exec my-server --dir $MODEL_DIR"]


def test_a_changed_uri_rolls_the_deployment():
    a = build_deployment(_svc(storageUri="s3://models/iris/v1/"), "default", storage=SETTINGS)
    b = build_deployment(_svc(storageUri="s3://models/iris/v2/"), "default", storage=SETTINGS)
    key = "elasticserving.paddlepaddle.org/config-hash"
    assert a["metadata"]["annotations"][key] != b["metadata"]["annotations"][key]


def _init_failed(message: str, restarts: int = 1) -> dict:
    term = {"exitCode": 4, "reason": "Error", "message": message}
    return {"metadata": {"name": "iris-default-x"},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": STORAGE_INITIALIZER, "ready": False, "restartCount": restarts,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": term}}],
                "containerStatuses": [{"name": "paddleserving", "ready": False,
                                       "state": {"waiting": {"reason": "PodInitializing"}}}]}}


def _beside_failed(message: str) -> dict:
    """The initializer beside our runtime, in its back-off after a failed pull; the runtime waits, running."""
    term = {"exitCode": 4, "reason": "Error", "message": message}
    return {"metadata": {"name": "iris-default-x"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "paddleserving", "ready": False, "restartCount": 0, "state": {"running": {}}},
                {"name": STORAGE_INITIALIZER, "ready": False, "restartCount": 2,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": term}}]}}


@pytest.mark.parametrize("status", [_init_failed, _beside_failed])
def test_a_failed_pull_is_the_pods_reason_with_the_uri(status):
    why = pod_failure(status("cannot pull s3://models/iris/: access denied by the S3 endpoint "
                                   "http://10.96.0.9:8333 (SignatureDoesNotMatch): check the credentials"))
    assert why == ("Pod iris-default-x: cannot pull s3://models/iris/: access denied by the S3 endpoint "
                   "http://10.96.0.9:8333 (SignatureDoesNotMatch): check the credentials")


def test_a_model_container_that_did_not_load_is_quoted():
    pod = {"metadata": {"name": "iris-default-x"},
           "status": {"phase": "Running", "containerStatuses": [
               {"name": "paddleserving", "ready": False, "restartCount": 2,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message":
                              "no model found in /mnt/models (the model pulled from s3://models/x/)"}}}]}}
    assert pod_failure(pod) == ("Pod iris-default-x: CrashLoopBackOff, last exit code 3 (Error): no model "
                                "found in /mnt/models (the model pulled from s3://models/x/)")


def test_a_pod_waiting_for_its_claim_to_bind_is_not_failing():
    pending = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."}]}}
    assert pod_failure(pending) is None


@pytest.mark.parametrize(("message", "failing"), [
    ("failed to sync secret cache: timed out waiting for the condition", False),
    ("failed to sync configmap cache: timed out waiting for the condition", False),
    ('secret "s3-creds" not found', True),
])
def test_a_secret_cache_not_synced_yet_is_not_failing(message, failing):
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "containerStatuses": [
        {"name": "paddleserving", "ready": False,
         "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}]}}
    assert (pod_failure(pod) is not None) is failing
