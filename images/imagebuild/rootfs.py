"""The build steps on a root filesystem directory: make the base, COPY from the context, RUN in a chroot.

Called by images/imagebuild/build.py between two layer snapshots. RUN happens in a private mount
namespace (`unshare -m`), so /proc, /dev, resolv.conf and the pip cache mounted for it vanish with its
last process: no mount outlives a step, even when the build is killed.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from imagebuild.dockerfile import DockerfileError, DockerIgnore

# Where the pip download/wheel cache is mounted while a RUN step runs (BuildKit's cache mount):
# the Dockerfiles say PIP_NO_CACHE_DIR=1 so an image never carries a cache; the build still reuses one.
CACHE_MOUNT = ".es-cache"


@dataclass(frozen=True)
class Base:
    """A FROM image made with mmdebstrap instead of pulled: Debian packages + hooks run in the chroot."""

    suite: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()  # (path, content) written into the rootfs
    env: dict[str, str] = field(default_factory=dict)
    cmd: tuple[str, ...] = ()

    def recipe(self) -> str:
        return repr((self.suite, self.packages, self.hooks, self.files, sorted(self.env.items()), self.cmd,
                     SLIM))


# Like the slim Debian images: no manuals, docs (but their copyright) or translations.
SLIM = ("path-exclude=/usr/share/man/*", "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright",
        "path-exclude=/usr/share/locale/*", "path-include=/usr/share/locale/locale.alias")

# What Debian's Docker images set for apt: `apt-get install` in a RUN leaves no .deb files nor
# package caches behind, and fetches no translations.
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"
APT_LIKE_DOCKER_DEBIAN = (
    ("etc/apt/apt.conf.d/docker-clean",
     f'DPkg::Post-Invoke {{ "{_CLEAN}"; }};\nAPT::Update::Post-Invoke {{ "{_CLEAN}"; }};\n'
     'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    ("etc/apt/apt.conf.d/docker-no-languages", 'Acquire::Languages "none";\n'),
    ("etc/apt/apt.conf.d/docker-autoremove-suggests", 'Apt::AutoRemove::SuggestsImportant "false";\n'),
)

# The images our Dockerfiles start FROM. python:3.11-slim-bookworm puts python, python3 and pip first
# on PATH; here they are Debian's python3.11 in a venv at /opt/venv (Debian's own python3 refuses
# `pip install` outside one, PEP 668).
BASES = {
    "python:3.11-slim-bookworm": Base(
        suite="bookworm",
        packages=("python3", "python3-venv", "ca-certificates"),
        hooks=("python3 -m venv /opt/venv",),
        files=APT_LIKE_DOCKER_DEBIAN,
        env={"PATH": "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "LANG": "C.UTF-8"},
        cmd=("python3",),
    ),
}


def make_base(base: Base, root: Path) -> None:
    """Debian into `root` (an empty directory) with mmdebstrap, then the hooks in a chroot."""
    cmd = ["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(base.packages)]
    cmd += [f"--dpkgopt={o}" for o in SLIM]
    cmd += [f"--customize-hook=chroot \"$1\" /bin/sh -c {shlex.quote(h)}" for h in base.hooks]
    subprocess.run(cmd + [base.suite, str(root)], check=True, stdout=sys.stderr)
    # The runtime (containerd, kubelet) provides these per container; never the build host's.
    for name in ("etc/resolv.conf", "etc/hostname"):
        (root / name).unlink(missing_ok=True)
        (root / name).write_text("")
    for name, content in base.files:
        (root / name).write_text(content)
    for d in ("proc", "sys", "dev", "tmp"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


_MOUNT = r"""set -e
root=$1; cache=$2; ca=$3; shift 3
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind "$cache" "$root/.es-cache/pip"
if [ -n "$ca" ]; then mount --bind "$ca" "$root/.es-cache/ca.crt"; fi
if [ -e /etc/resolv.conf ]; then mount --bind /etc/resolv.conf "$root/etc/resolv.conf"; fi
exec "$@"
"""

# The build host's network settings reach RUN like Docker's predefined proxy build args; they are
# not written into the image nor part of any cache key.
PASS_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")


def host_ca_bundle() -> str:
    """The host's CA bundle: a TLS-intercepting egress proxy's CA is trusted there, not in the rootfs."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      os.environ.get("REQUESTS_CA_BUNDLE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return ""


def run(root: Path, command: str, env: dict[str, str], workdir: str, user: str, cache: Path) -> None:
    """A Dockerfile RUN (shell form) in `root` with the image's environment, as `user`, in `workdir`."""
    cache.mkdir(parents=True, exist_ok=True)
    mnt = root / CACHE_MOUNT
    (mnt / "pip").mkdir(parents=True, exist_ok=True)
    (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in env.items() if k != "PIP_NO_CACHE_DIR"}
    env.setdefault("HOME", "/root")
    env["PIP_CACHE_DIR"] = f"/{CACHE_MOUNT}/pip"
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    ca = host_ca_bundle()
    if ca:
        (mnt / "ca.crt").write_text("")
        for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            env[var] = f"/{CACHE_MOUNT}/ca.crt"
    chroot = ["chroot"]
    if user and user.split(":")[0] not in ("0", "root"):
        chroot.append(f"--userspec={user}")
    chroot += [str(root), "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()],
               "/bin/sh", "-c", f"cd {shlex.quote(workdir)} || exit 1\n{command}"]
    try:
        subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _MOUNT,
                        "mount-and-run", str(root), str(cache), ca, *chroot], check=True,
                       stdout=sys.stderr)  # stdout carries only the `IMAGE TARBALL` lines
    except subprocess.CalledProcessError as exc:
        raise DockerfileError(f"RUN failed (exit {exc.returncode}): {command}") from None
    finally:
        shutil.rmtree(mnt, ignore_errors=True)


def _sources(context: Path, src: str, ignore: DockerIgnore) -> list[tuple[Path, str]]:
    """(file or dir in the context, its path relative to `src`) for one COPY source, ignores applied."""
    top = (context / src).resolve()
    if context.resolve() not in (top, *top.parents):
        raise DockerfileError(f"COPY source {src} is outside the build context")
    if not top.exists():
        raise DockerfileError(f"COPY source {src} does not exist")
    rel_top = top.relative_to(context.resolve()).as_posix()
    if not top.is_dir() or top.is_symlink():
        return [(top, "")]
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(top).as_posix()
        keep = []
        for name in dirnames + sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            ctx_rel = f"{rel_top}/{rel}" if rel_top != "." else rel
            if ignore.ignored(ctx_rel):
                continue
            out.append((Path(dirpath) / name, rel))
            if name in dirnames:
                keep.append(name)
        dirnames[:] = keep
    return out


def copy_digest(context: Path, sources: list[str], ignore: DockerIgnore) -> str:
    """What a COPY brings in (names, modes, contents): part of its layer's cache key."""
    h = hashlib.sha256()
    for src in sources:
        for path, rel in _sources(context, src, ignore):
            st = path.lstat()
            h.update(f"{src}\0{rel}\0{st.st_mode:o}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def copy(context: Path, sources: list[str], dest: str, root: Path, ignore: DockerIgnore) -> None:
    """A Dockerfile COPY: files keep their mode and mtime, owner root (Docker's defaults)."""
    for src in sources:
        entries = _sources(context, src, ignore)
        top = entries[0][0] if entries and entries[0][1] == "" else None
        if top is not None:  # a single file
            into = dest.endswith("/") or (root / dest.lstrip("/")).is_dir()
            target = dest.rstrip("/") + "/" + top.name if into else dest
            _copy_one(top, root / target.lstrip("/"))
            continue
        base = root / dest.lstrip("/")
        base.mkdir(parents=True, exist_ok=True)
        for path, rel in entries:
            _copy_one(path, base / rel)


def _copy_one(path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        target.unlink(missing_ok=True)
        os.symlink(os.readlink(path), target)
        os.lchown(target, 0, 0)
        return
    if path.is_dir():
        target.mkdir(exist_ok=True)
        shutil.copystat(path, target)
    else:
        shutil.copy2(path, target)
    os.chown(target, 0, 0)
