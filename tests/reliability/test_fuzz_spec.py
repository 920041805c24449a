"""Fuzz pass over the PaddleService loader: arbitrary YAML text and arbitrary manifests either load
or raise SpecError with a field; nothing else escapes (no crash of the CLI or the controller). Each test
counts its own inputs and records them, so any one of them can run alone."""

from __future__ import annotations

import collections

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.spec import PaddleService, SpecError, load_paddleservices
from tests.reliability.figures import record

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                   max_size=3), max_leaves=8)
endpoint = st.fixed_dictionaries({}, optional={
    "containerImage": st.one_of(st.text(max_size=8), values), "tag": st.one_of(st.text(max_size=5), values),
    "port": st.one_of(st.integers(-5, 70000), values), "arg": values})
service = st.fixed_dictionaries({}, optional={
    k: st.one_of(values, st.sampled_from(["10s", "1m", "abc", "70", "-1", "kpa.autoscaling.knative.dev", "rps"]))
    for k in ("autoscaler", "metric", "window", "panicWindow", "panicThreshold", "minScale", "maxScale",
              "target", "targetUtilization")})
manifests = st.fixed_dictionaries(
    {"apiVersion": st.sampled_from(["elasticserving.paddlepaddle.org/v1", "v1", ""]),
     "kind": st.sampled_from(["PaddleService", "Other"]),
     "metadata": st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["ok", "Bad_Name", "", "a" * 70])}),
                           values)},
    optional={"spec": st.one_of(values, st.fixed_dictionaries({}, optional={
        "default": st.one_of(endpoint, values), "canary": st.one_of(endpoint, values),
        "canaryTrafficPercent": st.one_of(st.integers(-5, 200), values), "service": st.one_of(service, values),
        "resources": values, "runtimeVersion": values}))})


def test_manifests_load_or_fail_cleanly():
    counts = collections.Counter()

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(manifests)
    def check(doc):
        counts["manifests"] += 1
        try:
            svc = PaddleService.from_dict(doc)
        except SpecError as exc:
            counts["refused"] += 1
            assert isinstance(exc.field, str) and str(exc)
            return
        counts["accepted"] += 1
        svc.autoscaling()
        svc.resources()
        assert PaddleService.from_dict(svc.to_manifest()) == svc

    check()
    record("fuzz_paddleservice_manifests", dict(counts, inputs_tried=counts["manifests"]))
    assert counts["manifests"] > 0 and counts["refused"] > 0


def test_yaml_text_loads_or_fails_cleanly():
    counts = collections.Counter()

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.text(max_size=200), manifests.map(lambda d: yaml.safe_dump(d, allow_unicode=True))))
    def check(text):
        counts["yaml_text"] += 1
        try:
            load_paddleservices(text)
            counts["accepted"] += 1
        except SpecError:
            counts["refused"] += 1

    check()
    record("fuzz_paddleservice_yaml", dict(counts, inputs_tried=counts["yaml_text"]))
    assert counts["yaml_text"] > 0
