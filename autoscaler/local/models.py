"""storageUri models on the local platform: before a replica of a side with a storageUri starts, its
model version is pulled (runtime.storage) into the cache under ~/.cache/elasticserving/model-cache,
once per version however many replicas start; credentials come from Secrets in the `up -f` files."""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from autoscaler.spec import EndpointSpec, SpecError
from runtime.storage import ModelCache, ModelVersion, StorageError, pull
from runtime.storage.names import ENV_KEYS

CACHE_ENV = "ELASTICSERVING_MODEL_CACHE"
DEFAULT_CACHE_MAX_BYTES = 20 * 1024**3


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/elasticserving/model-cache").expanduser()


def load_secrets(texts: list[str]) -> dict[str, dict[str, str]]:
    """The Secrets (`kind: Secret`, `data` base64 or `stringData`) in YAML texts, by `namespace/name`:
    the same file then works with `kubectl apply -f` and `elasticserving up -f`."""
    out: dict[str, dict[str, str]] = {}
    for text in texts:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            continue  # load_paddleservices reports the file's YAML error
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Secret":
                continue
            md = doc.get("metadata") or {}
            key = f"{md.get('namespace') or 'default'}/{md.get('name', '')}"
            data: dict[str, str] = {}
            for k, v in (doc.get("data") or {}).items():
                try:
                    data[str(k)] = base64.b64decode(str(v), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    # the message names the key, never the value
                    raise SpecError(f"Secret {key}", f"data.{k} is not base64 of UTF-8 text") from None
            data.update({str(k): str(v) for k, v in (doc.get("stringData") or {}).items()})
            out[key] = data
    return out


class LocalModels:
    """Pulls for the local platform: one pull per model version in flight at a time, in a thread."""

    def __init__(self, cache_dir: Path | None = None,
                 secrets: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.cache_dir = cache_dir or default_cache_dir()
        self.secrets = dict(secrets or {})
        self._cache: ModelCache | None = None
        self._pulls: dict[tuple[Any, ...], asyncio.Task[ModelVersion]] = {}

    def _credentials(self, namespace: str, spec: EndpointSpec) -> dict[str, str]:
        """A named Secret's AWS_* keys; without one, those of the stack's own environment."""
        if spec.storageSecret:
            found = self.secrets.get(f"{namespace}/{spec.storageSecret}")
            if found is None:
                raise StorageError(f"cannot pull {spec.storageUri}: Secret {namespace}/{spec.storageSecret} "
                                   "not found (locally, put it in a file given to `elasticserving up -f`)",
                                   retryable=False)
            return {k: found[k] for k in ENV_KEYS if found.get(k)}
        return {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}

    async def pull(self, namespace: str, spec: EndpointSpec, say: Callable[[str], None]) -> ModelVersion:
        """The model of `spec` (which has a storageUri) as a local directory; StorageError otherwise."""
        assert spec.storageUri is not None
        env = self._credentials(namespace, spec)
        flight = (namespace, spec.storageUri, spec.storageSecret, spec.storageSha256)
        task = self._pulls.get(flight)
        if task is None:
            task = self._pulls[flight] = asyncio.create_task(asyncio.to_thread(self._pull, spec, env, say),
                                                             name=f"pull {spec.storageUri}")
            task.add_done_callback(lambda _t: self._pulls.pop(flight, None))
        return await asyncio.shield(task)

    def _pull(self, spec: EndpointSpec, env: dict[str, str], say: Callable[[str], None]) -> ModelVersion:
        if self._cache is None:
            try:
                self._cache = ModelCache(self.cache_dir, DEFAULT_CACHE_MAX_BYTES)
            except OSError as exc:
                raise StorageError(f"cannot use the model cache {self.cache_dir}: {exc.strerror}") from None
        assert spec.storageUri is not None
        return pull(spec.storageUri, self._cache, env, spec.storageSha256, say=say)
