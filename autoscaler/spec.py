"""The PaddleService API model: parsing, defaults and validation of the custom resource.

Everything that reads a PaddleService (CLI, local platform, kubernetes controller, activator routes)
goes through `PaddleService.from_dict` / `load_paddleservices`; pure logic, no I/O beyond YAML text.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import typing
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runtime.storage.uri import StorageUriError, check_sha256, parse_uri

API_GROUP = "elasticserving.paddlepaddle.org"
API_VERSION = f"{API_GROUP}/v1"
KIND = "PaddleService"
PLURAL = "paddleservices"

# Annotation (on metadata) capping in-flight requests per replica, Knative's containerConcurrency.
CONTAINER_CONCURRENCY_ANNOTATION = f"{API_GROUP}/container-concurrency"
# Annotation (kubernetes platform, minScale 0 only): this many Pods per side run with the model loaded
# but take no traffic and do not count as replicas, so a scale from zero is a routing change.
STANDBY_ANNOTATION = f"{API_GROUP}/standby"
MAX_STANDBY = 10

# Tag routes (Knative's naming): `<tag>-<name>.<namespace>.<domain>` reaches only that side, whatever the split.
TAGS = ("default", "canary")
# spec.rolloutDuration: the CRD carries the same pattern, so kubectl and the local stack refuse the same
# values with the same message (`rollout_duration_error`).
ROLLOUT_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|ms|m|s))+$"
_ROLLOUT_DURATION_RE = re.compile(ROLLOUT_DURATION_PATTERN)

SIDES = ("default", "canary")

# Defaults as in the original ElasticServing (pkg/constants) and Knative's config-autoscaler.
DEFAULT_AUTOSCALER = "kpa.autoscaling.knative.dev"
DEFAULT_METRIC = "concurrency"
DEFAULT_TARGET = 100
DEFAULT_TARGET_UTILIZATION = "70"
DEFAULT_WINDOW = "60s"
DEFAULT_PANIC_WINDOW = "10"
DEFAULT_PANIC_THRESHOLD = "200"
DEFAULT_MIN_SCALE = 1
DEFAULT_MAX_SCALE = 10
DEFAULT_RESOURCES = {"cpu": "0.1", "memory": "128Mi"}

# Knative bounds: the stable window is 6s..1h, the panic window 1%..100% of it.
MIN_WINDOW_SECONDS = 6.0
MAX_WINDOW_SECONDS = 3600.0

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# Where a replica finds a storageUri's model (a Pod mounts it there; locally the cache entry's path).
MODEL_DIR_ENV = "MODEL_DIR"
POD_MODEL_DIR = "/mnt/models"
_DURATION_RE = re.compile(r"^(?:([0-9]+(?:\.[0-9]+)?)(h|ms|m|s))+$")  # ASCII digits, as Go's
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|e[0-9]+)?$")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class SpecError(ValueError):
    """A PaddleService that cannot be accepted; `field` names the offending path."""

    def __init__(self, field: str, message: str, where: str = ""):
        super().__init__(where + (f"{field}: {message}" if field else message))
        self.field = field
        self.message = message
        self.where = where  # the file or document, printed once before the field

    def located(self, where: str) -> SpecError:
        """The same error inside `where` (a file name, "document 2"): `where: [earlier where: ]field: msg`."""
        return SpecError(self.field, self.message, f"{where}: {self.where}")


# YAML's names for what Python calls dict, list, str...: an error message speaks the user's language.
_YAML_KINDS = {"dict": "a mapping", "list": "a list", "str": "a string", "int": "a number", "float": "a number",
               "bool": "a boolean", "NoneType": "nothing"}
_PYTHON_CLASS_RE = re.compile(r" or instance of \w+")


def plain_message(msg: str) -> str:
    """A pydantic message in the user's words: no model class names, no Python type names."""
    msg = _PYTHON_CLASS_RE.sub("", msg.removeprefix("Value error, "))
    return msg.replace("a valid dictionary", "a mapping")


def did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """`, did you mean `minScale`?` for the closest known name (difflib), else "" (pure)."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    if not close:  # a case slip difflib rates low (`MINSCALE`)
        close = [k for k in known if k.lower() == str(name).lower()][:1]
    return f", did you mean `{close[0]}`?" if close else ""


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (`10s`, `1m30s`, `500ms`) into seconds."""
    value = str(text).strip()
    if not value or not _DURATION_RE.match(value):
        raise ValueError(f"invalid duration {text!r} (expected e.g. 10s, 1m, 1m30s)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(value))


def rollout_duration_error(value: Any) -> str:
    """The API server's words for a spec.rolloutDuration its CRD schema refuses (type, then pattern)."""
    if not isinstance(value, str):
        kind = "integer" if isinstance(value, int) and not isinstance(value, bool) else \
            "number" if isinstance(value, float) else "boolean" if isinstance(value, bool) else type(value).__name__
        return f'Invalid value: "{kind}": spec.rolloutDuration in body must be of type string: "{kind}"'
    return (f"Invalid value: {json.dumps(value)}: spec.rolloutDuration in body should match "
            f"'{ROLLOUT_DURATION_PATTERN}'")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class EndpointSpec(_Model):
    """One side (default or canary) of a PaddleService: the container that serves the model."""

    containerImage: str
    tag: str
    port: int
    arg: str | None = None
    # The model, pulled before the replica starts and shown to it read-only at $MODEL_DIR (optional).
    storageUri: str | None = None
    storageSecret: str | None = None  # a Secret (namespace of the service) with AWS_* keys for s3://
    storageSha256: str | None = None  # the download's digest: verified, and then the cache key

    @field_validator("storageUri", "storageSha256")
    @classmethod
    def _storage(cls, v: str | None, info: pydantic.ValidationInfo) -> str | None:
        """runtime/storage's checks: the URI parses; the digest is normalized."""
        if v is None:
            return v
        try:
            if info.field_name == "storageSha256":
                return check_sha256(v)
            parse_uri(v)
            return v
        except StorageUriError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("storageSecret")
    @classmethod
    def _secret_name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 253 or not _SECRET_NAME_RE.match(v)):
            raise ValueError(f"{v!r} is not a valid Secret name")
        return v

    @model_validator(mode="after")
    def _storage_fields_need_a_uri(self) -> EndpointSpec:
        if self.storageUri is None and (self.storageSecret or self.storageSha256):
            raise ValueError("storageSecret and storageSha256 need a storageUri")
        return self

    @field_validator("containerImage", "tag")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("port")
    @classmethod
    def _port_range(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"port {v} out of range 1..65535")
        return v

    @property
    def image(self) -> str:
        return f"{self.containerImage}:{self.tag}"

    @property
    def arg_hash(self) -> str:
        """The first 8 hex digits of sha256(arg) ("" without an arg): an arg's identity for status."""
        return short_hash(self.arg) if self.arg else ""

    @property
    def revision(self) -> str:
        """The identity of this side's version: 8 hex digits of the hash of every field. A change of any
        field (image, tag, arg, port, model) is a new revision, i.e. a version change the release follows."""
        return short_hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))

    def command(self, service_name: str) -> str | None:
        """The replica's shell command: `arg`, or, for a storageUri without one, our runtime serving
        $MODEL_DIR under the service's name."""
        if self.arg or not self.storageUri:
            return self.arg
        return f"python3 -m runtime --model ${MODEL_DIR_ENV} --name {service_name} --port $PORT"


class ServiceSpec(_Model):
    """Autoscaling knobs (the original's Knative annotations), all optional."""

    autoscaler: Literal["kpa.autoscaling.knative.dev", "hpa.autoscaling.knative.dev"] | None = None
    metric: Literal["concurrency", "rps", "cpu"] | None = None
    window: str | None = None
    panicWindow: str | None = None
    panicThreshold: str | None = None
    minScale: int | None = None
    maxScale: int | None = None
    target: int | None = None
    targetUtilization: str | None = None

    @field_validator("window", "panicWindow", "panicThreshold", "targetUtilization", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


class ResourceRequirements(_Model):
    requests: dict[str, str] | None = None
    limits: dict[str, str] | None = None

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, dict):
            raise ValueError("must be a mapping of resource name to quantity")
        for name, qty in v.items():
            if not _QUANTITY_RE.match(str(qty)):
                raise ValueError(f"invalid quantity {qty!r} for {name}")
        return {str(name): str(qty) for name, qty in v.items()}


class PaddleServiceSpec(_Model):
    default: EndpointSpec
    canary: EndpointSpec | None = None
    canaryTrafficPercent: int | None = None
    # A raised canary share and a default version change move traffic gradually over this long (Knative's
    # rollout-duration): 1 % first, then equal steps until the target. Absent or 0: at once.
    rolloutDuration: str | None = None
    runtimeVersion: str | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    service: ServiceSpec = Field(default_factory=ServiceSpec)

    @field_validator("rolloutDuration", mode="before")
    @classmethod
    def _rollout_duration(cls, v: Any) -> Any:
        # fullmatch: Python's `$` also matches before a final newline, the API server's does not.
        if v is not None and (not isinstance(v, str) or not _ROLLOUT_DURATION_RE.fullmatch(v)):
            raise ValueError(rollout_duration_error(v))
        return v

    @field_validator("canaryTrafficPercent")
    @classmethod
    def _percent(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= 100:
            raise ValueError(f"canaryTrafficPercent {v} out of range 0..100")
        return v


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None
    resourceVersion: str | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not v or len(v) > 63 or not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid DNS-1123 label (lower case letters, digits and '-')")
        return v


class AutoscalingConfig(BaseModel):
    """The effective, validated autoscaling settings of one PaddleService (defaults applied)."""

    model_config = ConfigDict(frozen=True)

    autoscaler_class: str
    metric: str
    target: float
    target_utilization: float  # fraction, 0 < u <= 1
    stable_window: float  # seconds
    panic_window_percentage: float
    panic_threshold: float  # fraction, e.g. 2.0 for 200%
    min_scale: int
    max_scale: int  # 0 = unbounded
    container_concurrency: int  # 0 = unlimited
    standby: int = 0  # warm, unrouted Pods per side (kubernetes; minScale 0 only)

    @property
    def panic_window(self) -> float:
        return self.stable_window * self.panic_window_percentage / 100.0

    @property
    def target_per_pod(self) -> float:
        return self.target * self.target_utilization


class PaddleService(BaseModel):
    """A PaddleService custom resource, validated."""

    model_config = ConfigDict(extra="ignore")

    apiVersion: str = API_VERSION
    kind: str = KIND
    metadata: Metadata
    spec: PaddleServiceSpec
    status: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_kind(self) -> PaddleService:
        if self.apiVersion != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION}, got {self.apiVersion!r}")
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND}, got {self.kind!r}")
        return self

    # ---- identity -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> str:
        """`namespace/name`, the identity used by every component."""
        return f"{self.namespace}/{self.name}"

    def host(self, domain: str) -> str:
        return f"{self.name}.{self.namespace}.{domain}"

    def url(self, domain: str) -> str:
        return f"http://{self.host(domain)}"

    def tag_host(self, tag: str, domain: str) -> str:
        """`default-<name>.<namespace>.<domain>`: the host that reaches only that side (a tag route)."""
        return f"{tag}-{self.name}.{self.namespace}.{domain}"

    @property
    def rollout_seconds(self) -> float:
        """spec.rolloutDuration in seconds (0: traffic moves at once)."""
        return parse_duration(self.spec.rolloutDuration) if self.spec.rolloutDuration else 0.0

    def side_spec(self, side: str) -> EndpointSpec | None:
        return self.spec.default if side == "default" else self.spec.canary

    @property
    def sides(self) -> list[str]:
        return ["default", "canary"] if self.spec.canary is not None else ["default"]

    def side_name(self, side: str) -> str:
        """Name of the workload of one side, as `status.default.name` reports it."""
        return f"{self.name}-{side}"

    @property
    def canary_percent(self) -> int:
        return (self.spec.canaryTrafficPercent or 0) if self.spec.canary is not None else 0

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, defaults: dict[str, Any] | None = None) -> PaddleService:
        """Validate a decoded manifest; raises SpecError naming the first offending field."""
        if not isinstance(data, dict):
            kind = _YAML_KINDS.get(type(data).__name__, "a value of another kind")
            raise SpecError("", f"a PaddleService must be a mapping, got {kind}")
        if data.get("spec") is None:
            for key in data:  # a misspelled `spec:` is the likelier story than a forgotten one
                if key not in cls.model_fields and did_you_mean(key, ["spec"]):
                    raise SpecError(str(key), f"unknown field `{key}`{did_you_mean(key, ['spec'])}")
            raise SpecError("spec", "field required")
        try:
            svc = cls.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        svc.autoscaling(defaults)  # validate autoscaling values eagerly
        return svc

    # ---- autoscaling ----------------------------------------------------------------------
    def _count_annotation(self, annotation: str, what: str, most: int) -> int:
        """An annotation holding an integer within 0..`most` (0 without it); SpecError otherwise."""
        text = self.metadata.annotations.get(annotation, "0")
        try:
            n = int(text)
        except ValueError:
            n = -1
        if n < 0 or n > most:
            raise SpecError(f"metadata.annotations[{annotation}]",
                            f"{what} {text!r} must be an integer within 0..{most}")
        return n

    def standby(self) -> int:
        """The standby annotation's Pod count per side (0 without it); SpecError when it is not 0..10."""
        return self._count_annotation(STANDBY_ANNOTATION, "standby", MAX_STANDBY)

    def autoscaling(self, defaults: dict[str, Any] | None = None) -> AutoscalingConfig:
        """Effective autoscaling settings; `defaults` holds cluster-level values
        (keys of Knative's config-autoscaler: `stable-window`, `target`, ...)."""
        d = defaults or {}
        s = self.spec.service

        def pick(value: Any, key: str, fallback: Any) -> Any:
            return value if value is not None else d.get(key, fallback)

        field = "spec.service"
        try:
            window = parse_duration(pick(s.window, "stable-window", DEFAULT_WINDOW))
        except ValueError as exc:
            raise SpecError(f"{field}.window", str(exc)) from None
        if not MIN_WINDOW_SECONDS <= window <= MAX_WINDOW_SECONDS:
            raise SpecError(f"{field}.window", f"window {window:g}s must be between 6s and 1h")

        def percent(name: str, value: Any, key: str, fallback: str) -> float:
            """A percentage given as a string or number (`"70"`, `70`, `"70.5"`, `"70%"`)."""
            text = pick(value, key, fallback)
            try:
                pct = float(str(text).strip().rstrip("%"))
            except ValueError:
                raise SpecError(f"{field}.{name}", f"invalid {name} {text!r}: not a number") from None
            if not math.isfinite(pct):
                raise SpecError(f"{field}.{name}", f"invalid {name} {text!r}")
            return pct

        panic_pct = percent("panicWindow", s.panicWindow, "panic-window-percentage", DEFAULT_PANIC_WINDOW)
        panic_threshold = percent("panicThreshold", s.panicThreshold, "panic-threshold-percentage",
                                  DEFAULT_PANIC_THRESHOLD)
        utilization = percent("targetUtilization", s.targetUtilization,
                              "container-concurrency-target-percentage", DEFAULT_TARGET_UTILIZATION)
        for name, pct, ok, within in (("panicWindow", panic_pct, 1.0 <= panic_pct <= 100.0, "1..100"),
                                      ("panicThreshold", panic_threshold, 100.0 < panic_threshold <= 1000.0,
                                       "101..1000"),
                                      ("targetUtilization", utilization, 1.0 <= utilization <= 100.0, "1..100")):
            if not ok:
                raise SpecError(f"{field}.{name}", f"{name} {pct:g}% must be within {within}")
        target = pick(s.target, "container-concurrency-target-default", DEFAULT_TARGET)
        if s.metric == "rps" and s.target is None:
            target = d.get("requests-per-second-target-default", 200)
        if float(target) < 0.01:
            raise SpecError(f"{field}.target", f"target {target} must be positive")
        min_scale = pick(s.minScale, "min-scale", DEFAULT_MIN_SCALE)
        max_scale = pick(s.maxScale, "max-scale", DEFAULT_MAX_SCALE)
        if min_scale < 0:
            raise SpecError(f"{field}.minScale", f"minScale {min_scale} must be >= 0")
        if max_scale < 0:
            raise SpecError(f"{field}.maxScale", f"maxScale {max_scale} must be >= 0 (0 = unbounded)")
        if max_scale and min_scale > max_scale:
            raise SpecError(f"{field}.minScale", f"minScale {min_scale} exceeds maxScale {max_scale}")
        cc = self._count_annotation(CONTAINER_CONCURRENCY_ANNOTATION, "containerConcurrency", 1000)
        standby = self.standby()
        if standby and min_scale:
            raise SpecError(f"metadata.annotations[{STANDBY_ANNOTATION}]",
                            f"standby Pods are for services that scale to zero; minScale is {min_scale}")
        return AutoscalingConfig(
            autoscaler_class=s.autoscaler or d.get("autoscaler-class", DEFAULT_AUTOSCALER),
            metric=s.metric or DEFAULT_METRIC,
            target=float(target),
            target_utilization=utilization / 100.0,
            stable_window=window,
            panic_window_percentage=panic_pct,
            panic_threshold=panic_threshold / 100.0,
            min_scale=int(min_scale),
            max_scale=int(max_scale),
            container_concurrency=cc,
            standby=standby,
        )

    def resources(self) -> dict[str, dict[str, str]]:
        """spec.resources with the original's defaults (0.1 CPU, 128Mi) filled in."""
        return {"requests": {**DEFAULT_RESOURCES, **(self.spec.resources.requests or {})},
                "limits": {**DEFAULT_RESOURCES, **(self.spec.resources.limits or {})}}

    def to_manifest(self) -> dict[str, Any]:
        """The resource as a plain dict (apiVersion, kind, metadata, spec), without status."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"status"})


def known_fields(loc: typing.Sequence[Any]) -> list[str]:
    """The field names the model at `loc` (a path of field names from PaddleService) accepts; [] where
    the path leads to no model (a mapping of free keys, a list)."""
    model: type[BaseModel] = PaddleService
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        inner = [a for a in (typing.get_args(field.annotation) or (field.annotation,))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return []
        model = inner[0]
    return list(model.model_fields)


def validation_error(exc: ValidationError) -> SpecError:
    """Pydantic's first error as a SpecError in the manifest's terms. An unknown field comes first (a
    misspelled `defualt:` also leaves `default` missing: the typo is the news) and names the closest
    known field."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = err["loc"]
    path = ".".join(str(p) for p in loc) or "(root)"
    if err["type"] == "extra_forbidden":
        name = str(loc[-1])
        return SpecError(path, f"unknown field `{name}`{did_you_mean(name, known_fields(loc[:-1]))}")
    if err["type"] == "missing":
        return SpecError(path, "field required")
    return SpecError(path, plain_message(err["msg"]))


def load_paddleservices(text: str, defaults: dict[str, Any] | None = None) -> list[PaddleService]:
    """Parse a (multi-document) YAML text; non-PaddleService documents (e.g. a Namespace) are skipped."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (yaml.YAMLError, RecursionError) as exc:  # PyYAML composes nested collections recursively
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise SpecError("", f"invalid YAML: {reason}") from None
    out = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") not in (None, KIND):
            continue
        try:
            out.append(PaddleService.from_dict(doc, defaults))
        except SpecError as exc:
            raise (exc.located(f"document {i + 1}") if len(docs) > 1 else exc) from None
    if not out:
        raise SpecError("kind", f"no {KIND} found")
    return out
