"""Unit tests of the PaddleService model: the manual's samples load, defaults apply, bad specs are
refused with the offending field named."""

from pathlib import Path

import pytest
import yaml

from autoscaler.spec import (
    CONTAINER_CONCURRENCY_ANNOTATION,
    ROLLOUT_DURATION_PATTERN,
    STANDBY_ANNOTATION,
    PaddleService,
    SpecError,
    load_paddleservices,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]


def manifest(**spec_overrides):
    spec = {"default": {"containerImage": "img", "tag": "v1", "port": 9292, "arg": "run"}}
    spec.update(spec_overrides)
    return {"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
            "metadata": {"name": "svc", "namespace": "ns"}, "spec": spec}


def test_lac_example_loads_with_namespace_document_skipped():
    (svc,) = load_paddleservices((ROOT / "examples/lac.yaml").read_text())
    assert svc.key == "paddleservice-system/paddleservice-sample"
    assert svc.spec.default.port == 9292
    assert svc.spec.runtimeVersion == "paddleserving"
    assert svc.host("example.com") == "paddleservice-sample.paddleservice-system.example.com"
    cfg = svc.autoscaling()
    assert cfg.min_scale == 0 and cfg.stable_window == 10.0
    assert cfg.panic_window == pytest.approx(1.0)


def test_defaults_match_the_original():
    cfg = PaddleService.from_dict(manifest()).autoscaling()
    assert (cfg.target, cfg.target_utilization, cfg.stable_window) == (100.0, 0.7, 60.0)
    assert (cfg.min_scale, cfg.max_scale, cfg.panic_threshold) == (1, 10, 2.0)
    assert cfg.metric == "concurrency" and cfg.autoscaler_class == "kpa.autoscaling.knative.dev"
    assert cfg.target_per_pod == pytest.approx(70.0)
    res = PaddleService.from_dict(manifest()).resources()
    assert res["requests"] == {"cpu": "0.1", "memory": "128Mi"}


def test_cluster_defaults_apply_below_spec_values():
    svc = PaddleService.from_dict(manifest(service={"target": 5}))
    cfg = svc.autoscaling({"stable-window": "30s", "target": 50, "container-concurrency-target-default": 7})
    assert cfg.stable_window == 30.0 and cfg.target == 5.0


def test_canary_and_traffic_percent():
    svc = PaddleService.from_dict(manifest(canary={"containerImage": "img", "tag": "v2", "port": 9292},
                                           canaryTrafficPercent=20))
    assert svc.sides == ["default", "canary"] and svc.canary_percent == 20
    assert PaddleService.from_dict(manifest()).canary_percent == 0


@pytest.mark.parametrize(
    "data, field",
    [
        ({"apiVersion": "elasticserving.paddlepaddle.org/v1", "kind": "PaddleService",
          "metadata": {"name": "x"}, "spec": {}}, "spec.default"),
        (manifest(default={"tag": "v1", "port": 1}), "spec.default.containerImage"),
        (manifest(default={"containerImage": "i", "port": 1}), "spec.default.tag"),
        (manifest(default={"containerImage": "i", "tag": "t"}), "spec.default.port"),
        (manifest(default={"containerImage": "i", "tag": "t", "port": 70000}), "spec.default.port"),
        (manifest(service={"minScale": -1}), "spec.service.minScale"),
        (manifest(service={"minScale": 5, "maxScale": 2}), "spec.service.minScale"),
        (manifest(service={"window": "ten seconds"}), "spec.service.window"),
        (manifest(service={"window": "2s"}), "spec.service.window"),
        (manifest(service={"panicWindow": "0"}), "spec.service.panicWindow"),
        (manifest(service={"panicThreshold": "50"}), "spec.service.panicThreshold"),
        (manifest(service={"targetUtilization": "abc"}), "spec.service.targetUtilization"),
        (manifest(service={"panicWindow": "ten"}), "spec.service.panicWindow"),
        (manifest(service={"panicThreshold": "nan"}), "spec.service.panicThreshold"),
        (manifest(service={"targetUtilization": "1e999"}), "spec.service.targetUtilization"),
        (manifest(service={"metric": "memory"}), "spec.service.metric"),
        (manifest(service={"autoscaler": "foo"}), "spec.service.autoscaler"),
        (manifest(canaryTrafficPercent=101), "spec.canaryTrafficPercent"),
        (manifest(resources={"requests": {"cpu": "lots"}}), "spec.resources.requests"),
        (manifest(bogus=1), "spec.bogus"),
    ],
)
def test_bad_specs_name_the_field(data, field):
    with pytest.raises(SpecError) as exc:
        PaddleService.from_dict(data)
    assert exc.value.field == field, str(exc.value)
    assert field in str(exc.value)


def test_bad_name_and_kind():
    bad = manifest()
    bad["metadata"]["name"] = "Not_Valid"
    with pytest.raises(SpecError, match="metadata.name"):
        PaddleService.from_dict(bad)
    bad = manifest()
    bad["apiVersion"] = "v2"
    with pytest.raises(SpecError, match="apiVersion"):
        PaddleService.from_dict(bad)


def test_container_concurrency_annotation():
    m = manifest()
    m["metadata"]["annotations"] = {CONTAINER_CONCURRENCY_ANNOTATION: "4"}
    assert PaddleService.from_dict(m).autoscaling().container_concurrency == 4
    m["metadata"]["annotations"] = {CONTAINER_CONCURRENCY_ANNOTATION: "-2"}
    with pytest.raises(SpecError, match="containerConcurrency"):
        PaddleService.from_dict(m)


def test_standby_annotation():
    m = manifest(service={"minScale": 0})
    assert PaddleService.from_dict(m).autoscaling().standby == 0
    m["metadata"]["annotations"] = {STANDBY_ANNOTATION: "2"}
    assert PaddleService.from_dict(m).autoscaling().standby == 2
    for bad in ("-1", "11", "one"):
        m["metadata"]["annotations"] = {STANDBY_ANNOTATION: bad}
        with pytest.raises(SpecError, match="standby"):
            PaddleService.from_dict(m)
    m = manifest(service={"minScale": 1})
    m["metadata"]["annotations"] = {STANDBY_ANNOTATION: "1"}
    with pytest.raises(SpecError, match="scale to zero"):
        PaddleService.from_dict(m)


def test_invalid_yaml_and_no_paddleservice():
    with pytest.raises(SpecError, match="invalid YAML"):
        load_paddleservices("a: [1, 2")
    with pytest.raises(SpecError, match="no PaddleService"):
        load_paddleservices("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_paddleservices("- 1\n- 2\n")


@pytest.mark.parametrize("text, seconds", [("10s", 10), ("1m", 60), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "s", "1d", "-1s", "1.s", "\u0663s", "1m\uff130s"])  # ٣: an Arabic-Indic 3
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_manifest_round_trip():
    svc = PaddleService.from_dict(manifest(service={"minScale": 0, "window": "10s"}))
    again = PaddleService.from_dict(svc.to_manifest())
    assert again == svc


def _side(**fields):
    return {"default": {"containerImage": "elasticserving/runtime", "tag": "latest", "port": 9292, **fields}}


@pytest.mark.parametrize(("fields", "reason"), [
    ({"storageUri": "gs://b/m"}, "unsupported storageUri scheme gs://"),
    ({"storageUri": "s3://Bad_Bucket/m"}, "not a valid S3 bucket name"),
    ({"storageUri": "https://h/dir/"}, "one file or archive"),
    ({"storageUri": "s3://models/m", "storageSecret": "Not_A_Name"}, "not a valid Secret name"),
    ({"storageUri": "s3://models/m.tgz", "storageSha256": "abc"}, "64 hexadecimal digits"),
    ({"storageSecret": "creds"}, "need a storageUri"),
])
def test_bad_storage_fields_say_why(fields, reason):
    with pytest.raises(SpecError, match=reason) as err:
        PaddleService.from_dict(manifest(**_side(**fields)))
    assert err.value.field.startswith("spec.default")


def test_a_storage_uri_without_arg_serves_model_dir_with_our_runtime():
    svc = PaddleService.from_dict(manifest(**_side(storageUri="s3://models/iris/", storageSecret="s3-creds",
                                                   storageSha256="A" * 64)))
    spec = svc.spec.default
    assert spec.storageSha256 == "a" * 64
    assert spec.command(svc.name) == "python3 -m runtime --model $MODEL_DIR --name svc --port $PORT"
    own = PaddleService.from_dict(manifest(**_side(storageUri="/srv/m", arg="my-server --dir $MODEL_DIR")))
    assert own.spec.default.command(own.name) == "my-server --dir $MODEL_DIR"
    assert PaddleService.from_dict(manifest()).spec.default.command("svc") == "run"


# ---- releases: spec.rolloutDuration, revisions, tag hosts ------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [("4s", 4.0), ("1m30s", 90.0), ("0s", 0.0), ("500ms", 0.5),
                                                ("1.5h", 5400.0), (None, 0.0)])
def test_rollout_duration(value, seconds):
    svc = PaddleService.from_dict(manifest(**({"rolloutDuration": value} if value is not None else {})))
    assert svc.rollout_seconds == seconds


@pytest.mark.parametrize(("value", "shown"), [
    ("4", '"4"'), ("abc", '"abc"'), ("-1s", '"-1s"'), ("1 s", '"1 s"'), ("", '""'), ("1d", '"1d"'),
    ("4s\n", '"4s\\n"'),
])
def test_a_rollout_duration_that_is_not_one_is_refused_in_the_api_servers_words(value, shown):
    with pytest.raises(SpecError) as exc:
        PaddleService.from_dict(manifest(rolloutDuration=value))
    assert exc.value.field == "spec.rolloutDuration"
    # What kube-apiserver answers for the CRD's pattern (tests/kubernetes/test_releases.py checks it there).
    assert str(exc.value) == (f"spec.rolloutDuration: Invalid value: {shown}: spec.rolloutDuration in body "
                              f"should match '{ROLLOUT_DURATION_PATTERN}'")


def test_a_rollout_duration_of_another_type_is_refused_as_the_api_server_does():
    with pytest.raises(SpecError) as exc:
        PaddleService.from_dict(manifest(rolloutDuration=30))
    assert str(exc.value) == ('spec.rolloutDuration: Invalid value: "integer": spec.rolloutDuration in body '
                              'must be of type string: "integer"')


def test_the_crd_carries_the_same_rollout_duration_pattern():
    crd = yaml.safe_load((ROOT / "deploy/01-crd.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["rolloutDuration"] == {**spec["rolloutDuration"], "type": "string",
                                       "pattern": ROLLOUT_DURATION_PATTERN}


def test_revisions_and_tag_hosts():
    a = PaddleService.from_dict(manifest())
    b = PaddleService.from_dict(manifest(default={"containerImage": "img", "tag": "v1", "port": 9292,
                                                  "arg": "run --fast"}))
    assert a.spec.default.revision != b.spec.default.revision  # an arg change is a new version
    assert a.spec.default.revision == PaddleService.from_dict(manifest()).spec.default.revision
    assert a.spec.default.arg_hash != b.spec.default.arg_hash and len(a.spec.default.arg_hash) == 8
    assert a.tag_host("canary", "example.com") == "canary-svc.ns.example.com"
