"""Pulling models from s3:// against a real S3 server (SeaweedFS on loopback, tests/s3_server.py), with the
product's own code (runtime.storage.pull, MinIO client): prefixes and single objects land at the right
paths, a listed version is pulled once, sha256 is verified, and every refusal is a StorageError in our
own words that never holds the secret."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from runtime.storage import ModelCache, PullLimits, StorageError, pull
from tests.helpers import free_ports
from tests.s3_server import S3Server


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    """One bucket for this module (weed gives every bucket volumes of its own); each test its own prefix."""
    return s3_server.make_bucket(f"pull-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cache(tmp_path: Path) -> ModelCache:
    return ModelCache(tmp_path / "cache", max_bytes=100_000_000)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(cache: ModelCache) -> list[Path]:
    return [*cache.entries.iterdir(), *cache.tmp.iterdir()]


def test_a_prefix_lands_at_relative_paths_and_siblings_stay_out(s3_server, bucket, prefix, cache):
    tree = {"model.onnx": os.urandom(50_000), "config.json": b'{"a": 1}', "sub/dir/vocab.txt": b"a\nb\n"}
    for rel, data in tree.items():
        s3_server.put(bucket, f"{prefix}/models/iris/{rel}", data)
    # siblings sharing the prefix's characters but not its "directory"
    s3_server.put(bucket, f"{prefix}/models/iris2/model.onnx", b"other model")
    s3_server.put(bucket, f"{prefix}/models/iris.txt", b"not a member")
    s3_server.put(bucket, f"{prefix}/models/iris-old/x", b"not a member")

    got = pull(f"s3://{bucket}/{prefix}/models/iris", cache, s3_server.env())
    assert not got.cached
    assert _files(got.path) == tree
    assert got.size == sum(len(d) for d in tree.values())
    assert got.identity.startswith("s3:") and got.uri == f"s3://{bucket}/{prefix}/models/iris"
    assert (got.path / "model.onnx").stat().st_mode & 0o222 == 0  # read-only for the replica

    # a trailing slash names the same directory (same files)
    slash = pull(f"s3://{bucket}/{prefix}/models/iris/", cache, s3_server.env())
    assert _files(slash.path) == tree


def test_a_single_object_key_is_its_basename(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/m/v1/model.onnx", b"onnx-v1")
    s3_server.put(bucket, f"{prefix}/m/v1/model.onnx.sig", b"sibling")
    got = pull(f"s3://{bucket}/{prefix}/m/v1/model.onnx", cache, s3_server.env())
    assert _files(got.path) == {"model.onnx": b"onnx-v1"}


def test_a_second_pull_is_a_cache_hit_and_a_changed_object_a_new_version(s3_server, bucket, prefix, cache):
    uri = f"s3://{bucket}/{prefix}/m"
    s3_server.put(bucket, f"{prefix}/m/model.onnx", b"version-1")
    s3_server.put(bucket, f"{prefix}/m/labels.txt", b"cat\ndog\n")
    first = pull(uri, cache, s3_server.env())
    again = pull(uri, cache, s3_server.env())
    assert not first.cached and again.cached
    assert again.path == first.path and again.identity == first.identity and again.key == first.key
    assert len(cache.list()) == 1

    s3_server.put(bucket, f"{prefix}/m/model.onnx", b"version-2")
    changed = pull(uri, cache, s3_server.env())
    assert not changed.cached and changed.identity != first.identity and changed.path != first.path
    assert _files(changed.path) == {"model.onnx": b"version-2", "labels.txt": b"cat\ndog\n"}
    assert (first.path / "model.onnx").read_bytes() == b"version-1"  # the old version is untouched
    assert pull(uri, cache, s3_server.env()).cached


def test_sha256_of_a_single_object_is_verified_then_needs_no_request(s3_server, bucket, prefix, cache):
    body = os.urandom(20_000)
    digest = hashlib.sha256(body).hexdigest()
    uri = f"s3://{bucket}/{prefix}/model.onnx"
    s3_server.put(bucket, f"{prefix}/model.onnx", body)

    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(StorageError) as e:
        pull(uri, cache, s3_server.env(), sha256=wrong)
    assert "checksum mismatch" in e.value.reason and wrong in e.value.reason and digest in e.value.reason
    assert not e.value.retryable
    assert cache.list() == [] and _leftovers(cache) == []  # nothing cached, nothing left half-built

    got = pull(uri, cache, s3_server.env(), sha256=digest.upper())
    assert not got.cached and got.identity == f"sha256:{digest}"
    assert _files(got.path) == {"model.onnx": body}
    # the content is named: a cached copy is used without a request (even with keys that would fail)
    bad_keys = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    hit = pull(uri, cache, bad_keys, sha256=digest)
    assert hit.cached and hit.path == got.path


def test_sha256_is_refused_for_a_prefix(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/m/a.bin", b"a")
    s3_server.put(bucket, f"{prefix}/m/b.bin", b"b")
    digest = hashlib.sha256(b"a").hexdigest()
    for uri in (f"s3://{bucket}/{prefix}/m", f"s3://{bucket}/{prefix}/m/"):
        with pytest.raises(StorageError) as e:
            pull(uri, cache, s3_server.env(), sha256=digest)
        assert "storageSha256 checks one object" in e.value.reason, uri
        assert not e.value.retryable
    assert cache.list() == []


def test_a_wrong_secret_is_access_denied_without_the_secret(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/model.onnx", b"x")
    wrong_secret = "WRONG" + s3_server.secret_key[5:]
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": wrong_secret}
    with pytest.raises(StorageError) as e:
        pull(f"s3://{bucket}/{prefix}/model.onnx", cache, env)
    text = str(e.value)
    assert "access denied" in text and "SignatureDoesNotMatch" in text, text
    assert f"s3://{bucket}/{prefix}/model.onnx" in text and s3_server.endpoint in text
    assert not e.value.retryable
    for secret in (wrong_secret, s3_server.secret_key, s3_server.read_only_secret_key):
        assert secret not in text and secret not in repr(e.value)
        assert secret[:16] not in text  # not even a part of it
    assert cache.list() == [] and _leftovers(cache) == []


def test_no_credentials_is_access_denied(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/model.onnx", b"x")
    env = {k: v for k, v in s3_server.env().items() if not k.startswith("AWS_ACCESS_KEY_ID")
           and not k.startswith("AWS_SECRET")}
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_ENDPOINT_URL_S3" in env
    with pytest.raises(StorageError) as e:
        pull(f"s3://{bucket}/{prefix}/model.onnx", cache, env)
    assert "access denied" in str(e.value) and "AccessDenied" in str(e.value), str(e.value)
    assert not e.value.retryable


def test_a_missing_bucket_does_not_exist(s3_server, cache):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(StorageError) as e:
        pull(f"s3://{missing}/model.onnx", cache, s3_server.env())
    assert f"bucket '{missing}' does not exist" in str(e.value), str(e.value)
    assert not e.value.retryable


def test_an_empty_prefix_has_no_objects(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/models/iris2/model.onnx", b"sibling only")
    for uri in (f"s3://{bucket}/{prefix}/models/iris", f"s3://{bucket}/{prefix}/nothing/"):
        with pytest.raises(StorageError) as e:
            pull(uri, cache, s3_server.env())
        assert f"no objects under {uri}" in str(e.value), str(e.value)
        assert not e.value.retryable
    assert cache.list() == []


def test_the_read_only_identity_can_pull(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/m/model.onnx", b"ro-bytes")
    s3_server.put(bucket, f"{prefix}/m/sub/extra.bin", b"extra")
    env = s3_server.env(read_only=True)
    assert env["AWS_ACCESS_KEY_ID"] == s3_server.read_only_access_key
    got = pull(f"s3://{bucket}/{prefix}/m", cache, env)
    assert not got.cached and _files(got.path) == {"model.onnx": b"ro-bytes", "sub/extra.bin": b"extra"}


def test_an_endpoint_nobody_listens_on_cannot_be_reached_and_is_retryable(s3_server, cache):
    (port,) = free_ports(1)
    env = {**s3_server.env(), "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    with pytest.raises(StorageError) as e:
        pull("s3://any-bucket/model.onnx", cache, env, limits=PullLimits(connect_timeout=2, read_timeout=2))
    text = str(e.value)
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in text, text
    assert "connection refused" in text
    assert e.value.retryable
    assert s3_server.secret_key not in text


def test_a_key_that_is_also_a_directory_is_a_storage_error(s3_server, bucket, prefix, cache):
    s3_server.put(bucket, f"{prefix}/d/x", b"an object")
    s3_server.put(bucket, f"{prefix}/d/x/y.bin", b"an object under it")
    with pytest.raises(StorageError) as e:
        pull(f"s3://{bucket}/{prefix}/d", cache, s3_server.env())
    assert "is both a file and a directory of other keys" in e.value.reason and not e.value.retryable
    assert cache.list() == [] and _leftovers(cache) == []
