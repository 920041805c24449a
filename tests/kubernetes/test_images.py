"""The images: the Dockerfiles under images/ (every COPY source and referenced script exists, every
image the manifests and the LAC example use is built by one of them, the modules they run exist), the
Docker-less build of them (images/imagebuild, scripts/build-images.sh), and the built images run by a
throwaway containerd + runc (when built, or when ELASTICSERVING_BUILD_IMAGES / CI ask for a build)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").rglob("Dockerfile*"))


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_there_are_runtime_gpu_and_control_plane_images() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    assert {"images/runtime/Dockerfile", "images/runtime/Dockerfile.gpu",
            "images/control-plane/Dockerfile"} <= names
    gpu = dict(_instructions(ROOT / "images/runtime/Dockerfile.gpu"))
    assert gpu["FROM"].startswith("nvidia/cuda:")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_copy_sources_and_scripts_exist(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    assert instructions and instructions[0][0] == "FROM"
    for word, args in instructions:
        if word in ("COPY", "ADD"):
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            stage = re.search(r"--from=(\S+)", args)
            if stage:  # from an earlier stage of the same Dockerfile, not the context
                assert any(w == "FROM" and a.endswith(f" AS {stage.group(1)}") for w, a in instructions)
                continue
            *sources, _dest = parts
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} missing"
        for ref in re.findall(r"(?:scripts|examples|deploy)/[\w./-]+", args):
            assert (ROOT / ref).exists(), f"{dockerfile.name}: {ref} missing"
        for module in re.findall(r"python3? -m ([\w.]+)", args):
            if module.split(".")[0] not in ("runtime", "activator", "autoscaler"):
                continue  # the standard library's (venv, pip)
            mod = ROOT / module.replace(".", "/")
            assert (mod / "__main__.py").exists() or mod.with_suffix(".py").exists(), module
        for module, name in re.findall(r"from ((?:runtime|activator|autoscaler)[\w.]*) import (\w+)", args):
            source = (ROOT / module.replace(".", "/")).with_suffix(".py")
            assert source.exists(), f"{dockerfile.name}: {module} missing"
            assert re.search(rf"^(def|class) {name}\b|^{name} =", source.read_text(), re.M), \
                f"{dockerfile.name}: {module}.{name} missing"


def test_every_image_used_is_built_here() -> None:
    built = set()
    for df in DOCKERFILES:
        built |= set(re.findall(r"-t (elasticserving/[\w-]+)", df.read_text()))
    used = set()
    for f in list((ROOT / "deploy").glob("*.yaml")) + sorted((ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not doc:
                continue
            if doc.get("kind") == "PaddleService":
                for side in ("default", "canary"):
                    if side in doc["spec"]:
                        used.add(doc["spec"][side]["containerImage"])
            for c in ((doc.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers", []):
                used.add(c["image"].rsplit(":", 1)[0])
    assert used, "no images found"
    assert used <= built, f"images without a Dockerfile: {used - built}"


# --- The Docker-less build (images/imagebuild, scripts/build-images.sh) -------------------------------

sys.path.insert(0, str(ROOT / "images"))
from imagebuild import build as imagebuild  # noqa: E402
from imagebuild import dockerfile as dfile  # noqa: E402
from imagebuild import layers, oci, rootfs  # noqa: E402


def _docker_less_config(name: str) -> dict:
    """The OCI config the Docker-less build derives from the image's Dockerfile (no layers built)."""
    target = imagebuild.TARGETS[name]
    instructions = dfile.read(ROOT / target.dockerfile)
    last_from = max(i for i, ins in enumerate(instructions) if ins.word == "FROM")
    config = dfile.ImageConfig()
    for ins in instructions[last_from + 1:]:
        if ins.word in dfile.CONFIG_WORDS:
            dfile.apply(config, ins)
    return config.to_oci()


@pytest.mark.parametrize("name, user, ports, cmd, entrypoint", [
    ("runtime-lac", "65532:65532", {"9292/tcp", "9293/tcp"},
     ["sh", "-c", 'exec python3 -m runtime --model lac --name lac --port "$PORT"'], None),
    ("runtime-models", "65532:65532", {"9292/tcp", "9293/tcp"},
     ["sh", "-c", 'exec python3 -m runtime --model efficientnet-lite0 --name image --port "$PORT"'], None),
    ("control-plane", "65532:65532", {"8080/tcp", "8081/tcp", "8090/tcp"},
     ["python", "-m", "autoscaler.kube"], None),
    ("pause", "65535:65535", set(), None, ["/pause"]),
])
def test_docker_less_config_is_the_dockerfiles(name, user, ports, cmd, entrypoint) -> None:
    config = _docker_less_config(name)
    assert config.get("User") == user
    assert set(config.get("ExposedPorts", {})) == ports
    assert config.get("Cmd") == cmd
    assert config.get("Entrypoint") == entrypoint
    if name != "pause":
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["PYTHONUNBUFFERED"] == "1" and env["PIP_NO_CACHE_DIR"] == "1"
        assert config["WorkingDir"] == "/app"


def test_every_target_and_dockerfile_are_paired() -> None:
    built_tags = set()
    for target in imagebuild.TARGETS.values():
        text = (ROOT / target.dockerfile).read_text()
        for name in target.names:
            assert f"-t {name.rsplit(':', 1)[0]}" in text, f"{target.dockerfile} does not build {name}"
        built_tags |= set(target.names)
    assert {"elasticserving/runtime-lac:latest", "elasticserving/runtime:latest",
            "elasticserving/control-plane:latest", "elasticserving/pause:3.10"} <= built_tags


def test_pause_is_compiled_with_the_dockerfiles_flags() -> None:
    run = next(a for w, a in _instructions(ROOT / "images/pause/Dockerfile") if w == "RUN" and a.startswith("gcc "))
    assert " ".join(imagebuild.PAUSE_CFLAGS) in run


@pytest.mark.parametrize("pattern, path, ignored", [
    ("**/__pycache__", "runtime/__pycache__", True),
    ("**/__pycache__", "runtime/__pycache__/server.cpython-311.pyc", True),
    ("**/__pycache__", "__pycache__", True),
    (".git", ".git/config", True),
    ("benchmarks/results", "benchmarks/results/x.json", True),
    ("benchmarks/results", "benchmarks/run.py", False),
    (".venv", "runtime/server.py", False),
])
def test_dockerignore(pattern: str, path: str, ignored: bool) -> None:
    assert dfile.DockerIgnore((pattern,)).ignored(path) is ignored


@pytest.mark.parametrize("name, full", [
    ("elasticserving/pause:3.10", "docker.io/elasticserving/pause:3.10"),
    ("elasticserving/runtime", "docker.io/elasticserving/runtime:latest"),
    ("busybox", "docker.io/library/busybox:latest"),
    ("localhost:5000/x/y", "localhost:5000/x/y:latest"),
    ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
])
def test_full_reference(name: str, full: str) -> None:
    assert oci.full_reference(name) == full


def test_layer_holds_the_changes_and_whiteouts_of_a_step(tmp_path: Path) -> None:
    """A step's layer: what it added or changed, whiteouts for what it removed, nothing else."""
    root = tmp_path / "root"
    (root / "keep").mkdir(parents=True)
    (root / "keep/same.txt").write_text("same")
    (root / "keep/edit.txt").write_text("old")
    (root / "gone/deep").mkdir(parents=True)
    (root / "gone/deep/file").write_text("x")
    (root / "gone.txt").write_text("x")
    before = layers.snapshot(root)

    (root / "keep/edit.txt").write_text("new content")
    (root / "new/dir").mkdir(parents=True)
    (root / "new/dir/file").write_text("added")
    (root / "new/link").symlink_to("dir/file")
    subprocess.run(["rm", "-rf", str(root / "gone"), str(root / "gone.txt")], check=True)

    changed, deleted = layers.diff(before, layers.snapshot(root))
    assert deleted == ["gone", "gone.txt"]  # a deleted directory once, not its children
    assert "keep/same.txt" not in changed and {"keep/edit.txt", "new/dir/file", "new/link"} <= set(changed)
    blob = layers.write_layer(root, changed, deleted, tmp_path / "blobs")
    blob_path = tmp_path / "blobs" / blob.digest.split(":", 1)[1]
    assert blob.size == blob_path.stat().st_size
    assert hashlib.sha256(blob_path.read_bytes()).hexdigest() == blob.digest.split(":", 1)[1]
    with tarfile.open(blob_path) as tar:
        names = set(tar.getnames())
        assert {".wh.gone", ".wh.gone.txt", "keep/edit.txt", "new/dir/file", "new/link"} <= names
        assert not names & {"keep/same.txt", "gone/deep/file"}
        assert hashlib.sha256(tar.extractfile("keep/edit.txt").read()).digest() == \
            hashlib.sha256(b"new content").digest()
        assert {m.uid for m in tar.getmembers()} == {0} or os.geteuid() != 0

    if os.geteuid() == 0:  # whiteouts become overlayfs whiteouts (character devices 0/0)
        lower = tmp_path / "lower"
        layers.unpack_layer(blob_path, lower, deleted)
        assert (lower / "keep/edit.txt").read_text() == "new content"
        assert os.readlink(lower / "new/link") == "dir/file"
        for name in ("gone", "gone.txt"):
            st = os.lstat(lower / name)
            assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
        assert not list(lower.rglob(".wh.*"))


def test_copy_is_dockers_and_its_key_covers_the_contents(tmp_path: Path) -> None:
    ctx, root = tmp_path / "ctx", tmp_path / "root"
    (ctx / "pkg/__pycache__").mkdir(parents=True)
    (ctx / "pkg/a.py").write_text("a = 1\n")
    (ctx / "pkg/__pycache__/a.cpython-311.pyc").write_bytes(b"junk")
    (ctx / "setup.cfg").write_text("[metadata]\n")
    (root / "app").mkdir(parents=True)
    ignore = dfile.DockerIgnore(("**/__pycache__",))
    key = rootfs.copy_digest(ctx, ["pkg/"], ignore)

    rootfs.copy(ctx, ["pkg/"], "/app/pkg/", root, ignore)  # a directory: its contents
    rootfs.copy(ctx, ["setup.cfg"], "/app", root, ignore)  # a file into an existing directory
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "app", "app/pkg", "app/pkg/a.py", "app/setup.cfg"]

    (ctx / "pkg/__pycache__/a.cpython-311.pyc").write_bytes(b"other junk")
    assert rootfs.copy_digest(ctx, ["pkg/"], ignore) == key  # ignored files do not rebuild
    (ctx / "pkg/a.py").write_text("a = 2\n")
    assert rootfs.copy_digest(ctx, ["pkg/"], ignore) != key


# --- The built images, run by a throwaway containerd + runc --------------------------------------------

CACHE = Path(os.environ.get("ELASTICSERVING_IMAGE_CACHE", Path.home() / ".cache/elasticserving/images"))
LAC_REQUEST = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}
LAC_ANSWER = {"result": [{"word_seg": "我|爱|北京|天安门"}]}


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """IMAGE -> archive, from scripts/build-images.sh: run when the images were built before (it
    then only rebuilds what changed) or when ELASTICSERVING_BUILD_IMAGES / CI ask for a build."""
    if not (os.environ.get("ELASTICSERVING_BUILD_IMAGES") or os.environ.get("CI")) and not all(
            (CACHE / "out" / f"{name}.tar").exists() for name in imagebuild.TARGETS):
        pytest.skip("images not built (scripts/build-images.sh, or set ELASTICSERVING_BUILD_IMAGES=1)")
    if os.geteuid() != 0:
        _missing("building and running images needs root")
    for tool in ("containerd", "ctr", "runc", "mmdebstrap", "gcc"):
        if shutil.which(tool) is None:
            _missing(f"{tool} not installed (apt-get install containerd runc mmdebstrap gcc)")
    out = subprocess.run([str(ROOT / "scripts/build-images.sh")], capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert set(lines) == {t.names[0] for t in imagebuild.TARGETS.values()}
    return {image: Path(path) for image, path in lines.items()}


class Containerd:
    """containerd with its own root, state and socket under `workdir`, CRI off (ctr only)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.address = str(workdir / "containerd.sock")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        config = self.workdir / "config.toml"
        config.write_text(
            'version = 2\n'
            f'root = "{self.workdir}/root"\nstate = "{self.workdir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.address}"\n'
            f'[ttrpc]\n  address = "{self.address}.ttrpc"\n')
        self.log = open(self.workdir / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: self.ctr("version", check=False).returncode == 0 or self.proc.poll() is not None,
                 timeout=60, what="containerd to answer")
        assert self.proc.poll() is None, (self.workdir / "containerd.log").read_text()[-2000:]

    def argv(self, *args: str) -> list[str]:
        return ["ctr", "-n", "k8s.io", "--address", self.address, *args]

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        out = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout)
        if check:
            assert out.returncode == 0, f"ctr {' '.join(args)}: {out.stderr[-2000:]}"
        return out

    def tasks(self) -> dict[str, tuple[int, str]]:
        """container id -> (pid, status)"""
        rows = self.ctr("tasks", "ls", check=False).stdout.splitlines()[1:]
        return {r.split()[0]: (int(r.split()[1]), r.split()[2]) for r in rows if len(r.split()) >= 3}

    def stop(self) -> None:
        """Tasks, containers, containerd, shims, mounts: everything it made, gone."""
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.tasks():
                self.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
                self.ctr("tasks", "delete", "--force", cid, check=False)
            for cid in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "delete", cid, check=False)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        for pid in _pids_with_arg(self.address):  # shims of tasks that would not die
            os.kill(pid, signal.SIGKILL)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mnt in reversed(mounts):
            if mnt.startswith(str(self.workdir)):
                subprocess.run(["umount", "-l", mnt], check=False)
        if getattr(self, "log", None):
            self.log.close()


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and arg.encode() in Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0"):
                pids.append(int(d))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="module")
def containerd(built: dict[str, Path]) -> Containerd:
    # a short path: the socket's must fit in sun_path (108 bytes)
    workdir = Path(tempfile.mkdtemp(prefix="es-ctrd-", dir="/tmp"))
    c = Containerd(workdir)
    try:
        c.start()
        for tarball in dict.fromkeys(built.values()):
            c.ctr("images", "import", str(tarball), timeout=1200)
        yield c
    finally:
        c.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(workdir)], check=False)


def _cid(what: str) -> str:
    return f"es-test-{what}-{uuid.uuid4().hex[:8]}"


def test_images_are_imported_under_their_names(containerd: Containerd) -> None:
    names = set(containerd.ctr("images", "ls", "-q").stdout.split())
    want = {oci.full_reference(n) for t in imagebuild.TARGETS.values() for n in t.names}
    assert want <= names


@pytest.mark.timeout(900)
def test_runtime_image_serves_lac_as_non_root(containerd: Containerd) -> None:
    image = oci.full_reference("elasticserving/runtime-lac:latest")
    uid = containerd.ctr("run", "--rm", image, _cid("id"), "id", "-u").stdout.strip()
    assert uid == "65532"
    port, grpc_port = free_port(), free_port()
    cid = _cid("runtime")
    # The image's own CMD (what a replica runs), told by env to use free loopback ports.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(containerd.argv("run", "--rm", "--net-host", "--env", f"PORT={port}",
                                            "--env", f"GRPC_PORT={grpc_port}",
                                            "--env", "ELASTICSERVING_BIND_HOST=127.0.0.1", image, cid),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def answer():
            assert proc.poll() is None, _tail(log)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/lac/prediction",
                                         data=json.dumps(LAC_REQUEST).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError):
                return None  # not listening yet, or 503 while the model loads

        assert wait_for(answer, timeout=600, interval=0.5, what="the LAC answer") == LAC_ANSWER
        containerd.ctr("tasks", "kill", "-s", "SIGTERM", cid)
        assert proc.wait(120) == 0, _tail(log)
    finally:
        if proc.poll() is None:
            containerd.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            proc.wait(60)


def _tail(f) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")[-3000:]


@pytest.mark.timeout(600)
def test_control_plane_image_starts(containerd: Containerd) -> None:
    image = oci.full_reference("elasticserving/control-plane:latest")
    out = containerd.ctr("run", "--rm", "--net-host", image, _cid("activator"), "python", "-m", "activator",
                         "--help")
    assert "usage: python -m activator" in out.stdout
    out = containerd.ctr("run", "--rm", image, _cid("imports"), "sh", "-c",
                         'id -u && python -c "import autoscaler.kube.main, activator.main; print(\'ok\')"')
    assert out.stdout.split() == ["65532", "ok"]
    # No Paddle in the control plane: only the runtime image serves models.
    out = containerd.ctr("run", "--rm", image, _cid("nopaddle"), "python", "-c", "import paddle", check=False)
    assert out.returncode != 0 and "No module named 'paddle'" in out.stderr + out.stdout


@pytest.mark.timeout(300)
def test_pause_image_sleeps_until_sigterm(containerd: Containerd) -> None:
    image = oci.full_reference("elasticserving/pause:3.10")
    cid = _cid("pause")
    proc = subprocess.Popen(containerd.argv("run", "--rm", image, cid), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        pid, _ = wait_for(lambda: containerd.tasks().get(cid, (0, ""))[1] == "RUNNING" and
                          containerd.tasks()[cid], timeout=120, what="the pause task to run")
        status = Path(f"/proc/{pid}/status").read_text()
        assert re.search(r"^Uid:\s+65535\s", status, re.M), status
        assert proc.poll() is None  # it sleeps
        containerd.ctr("tasks", "kill", "-s", "SIGTERM", cid)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            containerd.ctr("tasks", "kill", "-s", "SIGKILL", cid, check=False)
            proc.wait(60)
