"""Safe unpacking of a downloaded model archive (.tar.gz/.tgz/.zip) into the directory a cache entry
is built in: no path out of the target, no links out of it, no devices, and a cap on what it unpacks."""

from __future__ import annotations

import copy
import os
import stat
import tarfile
import zipfile
from pathlib import Path

from runtime.storage.errors import StorageError

# tarfile's FilterError kinds by name (Debian 12's Python 3.11.2, the images', has none), as an error
# names them ("refused" for any other)
_FILTER_REASONS = {"AbsolutePathError": "absolute path", "OutsideDestinationError": "its path leaves the target",
                   "SpecialFileError": "device or FIFO", "AbsoluteLinkError": "link to an absolute path",
                   "LinkOutsideDestinationError": "link that leaves the target"}


def unpack(archive: Path, target: Path, max_bytes: int, max_members: int = 100_000) -> int:
    """Unpack `archive` into the empty directory `target`; returns the bytes unpacked.
    StorageError (not retryable) for a corrupt, hostile or oversized archive."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            return _unzip(archive, target, max_bytes, max_members)
        return _untar(archive, target, max_bytes, max_members)
    except StorageError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        reason = (str(exc) or type(exc).__name__).splitlines()[0][:200]
        raise StorageError(f"corrupt archive {archive.name}: {reason}", retryable=False) from None


def _untar(archive: Path, target: Path, max_bytes: int, max_members: int) -> int:
    total = 0
    pep706 = hasattr(tarfile, "data_filter")  # else our copy of its "data" filter (_data_filter)
    root = os.path.realpath(target)
    with tarfile.open(archive, "r:*") as tar:
        members = []
        for i, m in enumerate(tar):
            if i >= max_members:
                raise StorageError(f"archive has more than {max_members} members", retryable=False)
            # tarfile's "data" filter (PEP 706) refuses absolute paths, '..', links that leave the
            # target, devices and FIFOs, and clears set-id bits; it raises FilterError naming the member.
            if not pep706:
                m = _data_filter(m, root)
            else:
                try:
                    m = tarfile.data_filter(m, str(target))
                except tarfile.FilterError as exc:
                    reason = _FILTER_REASONS.get(type(exc).__name__, "refused")
                    raise _unsafe(getattr(getattr(exc, "tarinfo", None), "name", "?"), reason) from None
            if m.isfile():
                total += m.size
                if total > max_bytes:
                    raise StorageError(f"archive unpacks to more than {_mb(max_bytes)}", retryable=False)
            members.append(m)
        tar.extractall(target, members=members, **({"filter": "data"} if pep706 else {}))
    return total


def _unsafe(name: str, reason: str) -> StorageError:
    return StorageError(f"unsafe archive member {name!r}: {reason}", retryable=False)


def _data_filter(m: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """PEP 706's "data" filter (CPython's tarfile._get_filtered_attrs) for a Python without it: what it
    refuses is refused with the same reasons; the copy it returns has no owner and no special mode bits."""
    name = m.name.lstrip("/")
    dest = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, dest]) != root:
        raise _unsafe(m.name, "its path leaves the target")
    if m.ischr() or m.isblk() or m.isfifo():
        raise _unsafe(m.name, "device or FIFO")
    if m.issym() or m.islnk():
        if os.path.isabs(m.linkname):
            raise _unsafe(m.name, "link to an absolute path")
        base = os.path.dirname(dest) if m.issym() else root
        if os.path.commonpath([root, os.path.realpath(os.path.join(base, m.linkname))]) != root:
            raise _unsafe(m.name, "link that leaves the target")
    out = copy.copy(m)
    out.name, out.uid, out.gid, out.uname, out.gname = name, os.getuid(), os.getgid(), "", ""
    out.mode = m.mode & 0o755 | (0o600 if m.isreg() or m.islnk() else 0o700)
    if (m.isreg() or m.islnk()) and not m.mode & 0o100:
        out.mode &= ~0o111
    return out


def _unzip(archive: Path, target: Path, max_bytes: int, max_members: int) -> int:
    total = 0
    root = os.path.realpath(target)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise StorageError(f"archive has more than {max_members} members", retryable=False)
        for info in infos:
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _unsafe(info.filename, "links are not unpacked from zip files")
            dest = os.path.realpath(os.path.join(root, info.filename))
            if info.filename.startswith(("/", "\\")) or ".." in info.filename.replace("\\", "/").split("/") \
                    or os.path.commonpath([root, dest]) != root:
                raise _unsafe(info.filename, "its path leaves the target")
            total += info.file_size
            if total > max_bytes:
                raise StorageError(f"archive unpacks to more than {_mb(max_bytes)}", retryable=False)
        for info in infos:
            # ZipExtFile stops at the declared size and checks the CRC, so a member cannot unpack to
            # more than the header said.
            zf.extract(info, root)
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"
