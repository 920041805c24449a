"""Safe unpacking: good archives unpack whole; hostile ones (traversal, absolute paths, links out,
devices, zip slips, size bombs, garbage) are refused with the member and the reason, writing nothing
outside the target."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from runtime.storage.archive import unpack
from runtime.storage.errors import StorageError


@pytest.fixture(autouse=True, params=["data_filter", "own_filter"])
def tar_filter(request, monkeypatch):
    """Every test twice: with tarfile's "data" filter, and with our own copy of it that a Python without
    PEP 706 uses (Debian 12's 3.11.2, the images' Python, has no tarfile.data_filter)."""
    if request.param == "own_filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def test_a_good_tar_unpacks_with_its_directories(tmp_path):
    arc = _tar(tmp_path / "m.tar.gz", [(_info("model/inference.json"), b"{}"),
                                       (_info("model/inference.pdiparams"), b"x" * 100),
                                       (_info("model/link", tarfile.SYMTYPE, "inference.json"), None)])
    target = tmp_path / "out"
    target.mkdir()
    assert unpack(arc, target, 10_000) == 102
    assert (target / "model/inference.pdiparams").read_bytes() == b"x" * 100
    assert (target / "model/link").resolve() == (target / "model/inference.json").resolve()


@pytest.mark.parametrize(("member", "reason"), [
    (_info("../evil.txt"), "its path leaves the target"),
    (_info("link", tarfile.SYMTYPE, "/etc/passwd"), "link to an absolute path"),
    (_info("link", tarfile.SYMTYPE, "../../outside"), "link that leaves the target"),
    (_info("hard", tarfile.LNKTYPE, "../../outside"), "leaves the target"),
    (_info("dev", tarfile.CHRTYPE), "device or FIFO"),
    (_info("fifo", tarfile.FIFOTYPE), "device or FIFO"),
])
def test_hostile_tar_members_are_refused(tmp_path, member, reason):
    data = b"evil" if member.type == tarfile.REGTYPE else None
    arc = _tar(tmp_path / "m.tgz", [(_info("ok.txt"), b"fine"), (member, data)])
    target = tmp_path / "deep" / "out"
    target.mkdir(parents=True)
    with pytest.raises(StorageError, match=reason) as err:
        unpack(arc, target, 10_000)
    assert not err.value.retryable
    assert member.name.split("/")[-1] in str(err.value) or "member" in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_an_absolute_tar_member_lands_inside_the_target(tmp_path):
    # the "data" filter strips the leading slash rather than refusing
    arc = _tar(tmp_path / "m.tgz", [(_info("/etc/evil.txt"), b"evil")])
    target = tmp_path / "out"
    target.mkdir()
    unpack(arc, target, 10_000)
    assert (target / "etc/evil.txt").read_bytes() == b"evil"


def test_a_tar_over_the_size_cap_is_refused_before_unpacking(tmp_path):
    arc = _tar(tmp_path / "m.tar.gz", [(_info("big"), b"\0" * 50_000)])
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(StorageError, match="unpacks to more than"):
        unpack(arc, target, 10_000)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("content", [b"not an archive at all", b"\x1f\x8b\x08\x00garbage"])
def test_garbage_is_a_corrupt_archive(tmp_path, content):
    arc = tmp_path / "m.tar.gz"
    arc.write_bytes(content)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(StorageError, match="corrupt archive m.tar.gz"):
        unpack(arc, target, 10_000)


def _zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def test_a_good_zip_unpacks(tmp_path):
    arc = _zip(tmp_path / "m.zip", [("model.onnx", b"onnx", None), ("sub/labels.txt", b"a\nb", None)])
    target = tmp_path / "out"
    target.mkdir()
    assert unpack(arc, target, 10_000) == 7
    assert (target / "sub/labels.txt").read_bytes() == b"a\nb"


@pytest.mark.parametrize(("name", "mode", "reason"), [
    ("../../evil.txt", None, "its path leaves the target"),
    ("/abs/evil.txt", None, "its path leaves the target"),
    ("link", 0o120777, "links are not unpacked"),
])
def test_hostile_zip_members_are_refused(tmp_path, name, mode, reason):
    arc = _zip(tmp_path / "m.zip", [("ok.txt", b"ok", None), (name, b"/etc/passwd", mode)])
    target = tmp_path / "a" / "out"
    target.mkdir(parents=True)
    with pytest.raises(StorageError, match=reason):
        unpack(arc, target, 10_000)
    assert list(target.iterdir()) == []  # checked before anything is written


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path):
    arc = _zip(tmp_path / "m.zip", [("zeros", b"\0" * 1_000_000, None)])
    assert arc.stat().st_size < 10_000
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(StorageError, match="unpacks to more than"):
        unpack(arc, target, 100_000)


def test_set_id_bits_and_others_write_are_cleared_and_the_owner_bits_kept(tmp_path):
    tool, data = _info("bin/tool"), _info("data.bin")
    tool.mode, data.mode = 0o6777, 0o666
    arc = _tar(tmp_path / "m.tgz", [(tool, b"#!/bin/sh\n"), (data, b"x")])
    target = tmp_path / "out"
    target.mkdir()
    unpack(arc, target, 10_000)
    assert (target / "bin/tool").stat().st_mode & 0o7777 == 0o755
    assert (target / "data.bin").stat().st_mode & 0o7777 == 0o644
