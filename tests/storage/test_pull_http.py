"""Pulling models over HTTP from a real origin on loopback: one download per version (ETag,
Last-Modified, or a given sha256), archives unpacked, the cache capped by LRU, concurrent pullers
of one version sharing one download, and every failure a StorageError naming the URI, never a secret."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest

from runtime.storage import ModelCache, PullLimits, StorageError, pull
from runtime.storage.__main__ import main as storage_main
from runtime.storage.cache import remove_tree
from tests.storage.http_origin import Blob, Origin


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def origin():
    with Origin() as o:
        yield o


@pytest.fixture
def cache(tmp_path):
    return ModelCache(tmp_path / "cache", max_bytes=10_000_000)


def test_a_file_is_downloaded_once_per_etag(origin, cache):
    origin.blobs["/m/model.onnx"] = Blob(b"onnx-bytes-v1", etag='"v1"')
    first = pull(origin.url("/m/model.onnx"), cache)
    assert not first.cached and (first.path / "model.onnx").read_bytes() == b"onnx-bytes-v1"
    assert origin.bodies_sent["/m/model.onnx"] == 1
    again = pull(origin.url("/m/model.onnx"), cache)
    assert again.cached and again.path == first.path and again.identity == 'etag:"v1"'
    assert origin.bodies_sent["/m/model.onnx"] == 1 and origin.heads["/m/model.onnx"] == 2  # a HEAD, no body
    # read-only for the replica
    assert not os.access(first.path / "model.onnx", os.W_OK) or os.geteuid() == 0
    assert (first.path / "model.onnx").stat().st_mode & 0o222 == 0
    # a new version at the same URI is a new entry
    origin.blobs["/m/model.onnx"] = Blob(b"onnx-bytes-v2", etag='"v2"')
    v2 = pull(origin.url("/m/model.onnx"), cache)
    assert not v2.cached and v2.path != first.path and (v2.path / "model.onnx").read_bytes() == b"onnx-bytes-v2"


def test_a_server_refusing_head_is_asked_with_a_get_read_only_on_a_miss(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"x" * 3_000_000, etag='"e"', head_status=403)
    assert not pull(origin.url("/m.onnx?sig=1"), cache).cached
    assert pull(origin.url("/m.onnx?sig=1"), cache).cached
    assert origin.heads["/m.onnx"] == 2 and origin.gets["/m.onnx"] == 4


def test_last_modified_names_a_version_too(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"abc", last_modified="Wed, 21 Oct 2026 07:28:00 GMT")
    assert not pull(origin.url("/m.onnx"), cache).cached
    assert pull(origin.url("/m.onnx"), cache).cached


def test_without_any_version_header_the_content_digest_keys_one_copy(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"abc")
    a, b = pull(origin.url("/m.onnx"), cache), pull(origin.url("/m.onnx"), cache)
    assert a.path == b.path and a.identity == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert len(cache.list()) == 1


def test_a_given_sha256_is_verified_and_then_needs_no_request(origin, cache):
    body = b"model-bytes"
    digest = hashlib.sha256(body).hexdigest()
    origin.blobs["/m.onnx"] = Blob(body, etag='"e"')
    first = pull(origin.url("/m.onnx"), cache, sha256=digest.upper())
    assert not first.cached and first.identity == f"sha256:{digest}"
    gets = origin.gets["/m.onnx"]
    assert pull(origin.url("/m.onnx"), cache, sha256=digest).cached
    assert origin.gets["/m.onnx"] == gets  # the cache answered: the origin was not asked


def test_a_checksum_mismatch_is_refused_and_nothing_is_cached(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"tampered", etag='"e"')
    with pytest.raises(StorageError, match=r"cannot pull http://127\.0\.0\.1:\d+/m\.onnx: checksum mismatch") as err:
        pull(origin.url("/m.onnx"), cache, sha256="0" * 64)
    assert not err.value.retryable
    assert cache.list() == [] and list(cache.tmp.iterdir()) == []


def test_an_archive_is_unpacked_into_the_entry(origin, cache):
    origin.blobs["/iris.tar.gz"] = Blob(_tgz({"inference.json": b"{}", "inference.pdiparams": b"p"}), etag='"a"')
    v = pull(origin.url("/iris.tar.gz"), cache)
    assert sorted(p.name for p in v.path.iterdir()) == ["inference.json", "inference.pdiparams"]
    assert v.size == 3


def test_a_hostile_archive_is_refused_with_the_uri(origin, cache):
    origin.blobs["/evil.tgz"] = Blob(_tgz({"../../escape": b"x"}), etag='"a"')
    with pytest.raises(StorageError, match=r"/evil\.tgz: unsafe archive member '\.\./\.\./escape'"):
        pull(origin.url("/evil.tgz"), cache)
    assert cache.list() == []


@pytest.mark.parametrize(("blob", "reason", "retryable"), [
    (None, "not found \\(HTTP 404\\)", False),
    (Blob(b"", status=403), "access denied \\(HTTP 403\\)", False),
    (Blob(b"", status=503), "answered HTTP 503", True),
    (Blob(b"x" * 1000, etag='"e"', cut_after=10), "ended after 10 of 1000 bytes|broke off", True),
])
def test_failures_name_the_uri_and_the_reason(origin, cache, blob, reason, retryable):
    if blob is not None:
        origin.blobs["/m.onnx"] = blob
    with pytest.raises(StorageError, match=reason) as err:
        pull(origin.url("/m.onnx?X-Amz-Signature=topsecret"), cache)
    assert err.value.retryable is retryable
    assert "topsecret" not in str(err.value) and f"127.0.0.1:{origin.port}/m.onnx?…" in str(err.value)


def test_an_unreachable_origin(cache):
    with Origin() as o:
        url = o.url("/m.onnx")
    with pytest.raises(StorageError, match="cannot reach 127.0.0.1:\\d+: connection refused") as err:
        pull(url, cache, limits=PullLimits(connect_timeout=2.0))
    assert err.value.retryable


def test_a_stalled_download_times_out(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"x" * 100_000, etag='"e"', stall_after=10)
    with pytest.raises(StorageError, match="broke off: timed out"):
        pull(origin.url("/m.onnx"), cache, limits=PullLimits(read_timeout=0.5))
    origin.release.set()


def test_the_download_size_cap(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"x" * 5000, etag='"e"')
    with pytest.raises(StorageError, match="over the 0 MB download limit"):
        pull(origin.url("/m.onnx"), cache, limits=PullLimits(max_bytes=1000))


def test_a_user_password_never_shows(origin, cache):
    with pytest.raises(StorageError) as err:
        pull(f"http://alice:hunter2@127.0.0.1:{origin.port}/absent.onnx", cache)
    assert "hunter2" not in str(err.value) and "alice" not in str(err.value)


def test_the_cache_evicts_the_least_recently_used_version(origin, tmp_path):
    cache = ModelCache(tmp_path / "c", max_bytes=2500)
    for name in ("a", "b", "c"):
        origin.blobs[f"/{name}.onnx"] = Blob(name.encode() * 1000, etag=f'"{name}"')
    a = pull(origin.url("/a.onnx"), cache)
    b = pull(origin.url("/b.onnx"), cache)
    assert pull(origin.url("/a.onnx"), cache).cached  # a is now the most recently used
    os.utime(cache.entries / f"{b.key}.json", (1, 1))  # b clearly older than a
    c = pull(origin.url("/c.onnx"), cache)
    keys = {e.key for e in cache.list()}
    assert keys == {a.key, c.key} and not b.path.exists()


def test_recently_used_versions_are_protected_from_eviction(origin, tmp_path):
    cache = ModelCache(tmp_path / "c", max_bytes=1500, protect_seconds=3600)
    for name in ("a", "b"):
        origin.blobs[f"/{name}.onnx"] = Blob(name.encode() * 1000, etag=f'"{name}"')
    a = pull(origin.url("/a.onnx"), cache)
    pull(origin.url("/b.onnx"), cache)
    assert a.path.exists()  # over the cap, but a Pod may still read it


def test_concurrent_pulls_of_one_version_download_once(origin, tmp_path):
    origin.blobs["/m.onnx"] = Blob(b"x" * 2_000_000, etag='"one"')
    results, errors = [], []

    def worker() -> None:
        try:  # a cache object per puller, as separate init containers have
            results.append(pull(origin.url("/m.onnx"), ModelCache(tmp_path / "shared", 10**8)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 4
    assert len({r.path for r in results}) == 1 and sum(not r.cached for r in results) == 1
    assert origin.bodies_sent["/m.onnx"] == 1


def test_progress_lines_for_a_long_download(origin, cache):
    origin.blobs["/big.onnx"] = Blob(b"x" * 12_000_000, etag='"e"')
    lines: list[str] = []
    pull(origin.url("/big.onnx"), cache, say=lines.append)
    assert lines and lines[-1].startswith(f"pulled http://127.0.0.1:{origin.port}/big.onnx: 12.0 MB in ")


def test_a_local_path_is_used_in_place(tmp_path, cache):
    (tmp_path / "m").mkdir()
    v = pull(str(tmp_path / "m"), cache)
    assert v.path == tmp_path / "m" and v.cached and cache.list() == []
    with pytest.raises(StorageError, match="no such file or directory"):
        pull(f"file://{tmp_path}/absent", cache)
    with pytest.raises(StorageError, match="pvc:// is mounted by Kubernetes"):
        pull("pvc://claim/m", cache)


def test_the_init_container_links_the_version_and_reports(origin, tmp_path, capsys):
    origin.blobs["/iris.tgz"] = Blob(_tgz({"model.onnx": b"o", "labels.txt": b"l"}), etag='"a"')
    dest, report, term = tmp_path / "mnt-models", tmp_path / "report.json", tmp_path / "termination-log"
    args = [origin.url("/iris.tgz"), "--cache", str(tmp_path / "cache"), "--dest", str(dest),
            "--report", str(report), "--termination-log", str(term)]
    assert storage_main(args) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["labels.txt", "model.onnx"]
    assert (dest / "model.onnx").read_bytes() == b"o" and (dest / "model.onnx").is_symlink()
    assert '"cache": "miss"' in report.read_text()
    assert storage_main(args) == 0  # a second Pod on this node
    assert '"cache": "hit"' in report.read_text() and origin.bodies_sent["/iris.tgz"] == 1
    assert "is in this node's cache: nothing downloaded" in capsys.readouterr().err
    assert storage_main([origin.url("/absent.tgz"), "--cache", str(tmp_path / "cache"),
                         "--termination-log", str(term)]) == 4
    assert term.read_text() == f"cannot pull {origin.url('/absent.tgz')}: not found (HTTP 404)"


def test_a_destination_that_cannot_be_written_is_said_without_the_uri_secrets(origin, tmp_path, capsys):
    origin.blobs["/iris.onnx"] = Blob(b"onnx", etag='"a"')
    (tmp_path / "not-a-dir").write_text("")
    url = origin.url("/iris.onnx").replace("http://", "http://reader:s3cret-pw@") + "?sig=s3cret-sig"
    term = tmp_path / "termination-log"
    assert storage_main([url, "--cache", str(tmp_path / "cache"), "--dest", str(tmp_path / "not-a-dir" / "m"),
                         "--termination-log", str(term)]) == 4
    assert term.read_text().startswith(f"cannot pull {origin.url('/iris.onnx')}?…: ")
    assert "s3cret" not in term.read_text() + capsys.readouterr().err


def _pull_as(uid: int, url: str, cache_dir) -> str:
    """pull() in a forked child running as `uid` (the modules are loaded already: the child needs no
    file of the venv, which another user may not read); its outcome as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            v = pull(url, ModelCache(cache_dir, 10**8))
            out = f"ok cached={v.cached} files={sorted(p.name for p in v.path.rglob('*'))}"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = f"failed {type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text


def test_a_non_root_init_container_pulls_into_a_shared_cache(origin, request):
    """As in a Pod: the init container runs as the runtime image's user (65532), not root, in a
    world-writable (sticky) cache directory; a second pull by that user is a hit."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the pull as another user")
    origin.blobs["/iris.tgz"] = Blob(_tgz({"sub/model.onnx": b"o", "labels.txt": b"l"}), etag='"a"')
    # pytest's own tmp_path sits below a 0700 directory of root's
    root = Path(tempfile.mkdtemp(prefix="es-cache-", dir="/tmp"))
    root.chmod(0o1777)
    request.addfinalizer(lambda: remove_tree(root))
    first = _pull_as(65532, origin.url("/iris.tgz"), root / "ns")
    assert first == "ok cached=False files=['labels.txt', 'model.onnx', 'sub']", first
    assert _pull_as(65532, origin.url("/iris.tgz"), root / "ns").startswith("ok cached=True")
    assert origin.bodies_sent["/iris.tgz"] == 1
    assert (root / "ns").stat().st_uid == 65532


def test_a_cache_removed_while_in_use_is_made_again(origin, cache):
    origin.blobs["/m.onnx"] = Blob(b"abc", etag='"e"')
    pull(origin.url("/m.onnx"), cache)
    remove_tree(cache.root)
    again = pull(origin.url("/m.onnx"), cache)
    assert not again.cached and (again.path / "m.onnx").read_bytes() == b"abc"


def test_an_unwritable_cache_is_a_storage_error(origin, tmp_path):
    origin.blobs["/m.onnx"] = Blob(b"abc", etag='"e"')
    cache = ModelCache(tmp_path / "c", 10**6)
    (cache.root / ".lock").unlink(missing_ok=True)
    (cache.root / ".lock").mkdir()  # os.open of the lock file fails, as on a broken disk
    with pytest.raises(StorageError, match=r"cannot pull .*/m\.onnx: the model cache .*c: Is a directory"):
        pull(origin.url("/m.onnx"), cache)
