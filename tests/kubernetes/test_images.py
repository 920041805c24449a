"""The images: the Dockerfiles under images/ (every COPY source and referenced script exists, every
image the manifests and the LAC example use is built by one of them, the modules they run exist, the
config they give), the Docker-less build of them (scripts/build-images.sh: buildah bud, OCI archives
named for containerd), and the built images run by a throwaway containerd + runc (when built, or when
ELASTICSERVING_BUILD_IMAGES / CI ask for a build)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple

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


# --- The Docker-less build (scripts/build-images.sh: buildah bud on these Dockerfiles) -----------------

SCRIPT = ROOT / "scripts/build-images.sh"
CACHE = Path(os.environ.get("ELASTICSERVING_IMAGE_CACHE", Path.home() / ".cache/elasticserving/images"))


class Target(NamedTuple):
    dockerfile: str
    stage: str | None  # its --target; None: the Dockerfile's last stage
    names: tuple[str, ...]  # the first is the `IMAGE` of the script's output line


RUNTIME = "images/runtime/Dockerfile"
TARGETS = {
    "runtime-lac": Target(RUNTIME, "lac", ("elasticserving/runtime-lac:latest", "elasticserving/runtime:latest")),
    "runtime-models": Target(RUNTIME, "models",
                             ("elasticserving/runtime-image:latest", "elasticserving/runtime-ocr:latest")),
    "runtime-tf": Target(RUNTIME, "tf", ("elasticserving/runtime-tf:latest",)),
    "control-plane": Target("images/control-plane/Dockerfile", None, ("elasticserving/control-plane:latest",)),
    "pause": Target("images/pause/Dockerfile", None, ("elasticserving/pause:3.10",)),
}
# what the script builds when no NAME is given (runtime-tf only when named: heavy, nothing deploys it)
BUILT_BY_DEFAULT = {k: v for k, v in TARGETS.items() if k != "runtime-tf"}


def _full(name: str) -> str:
    """`elasticserving/pause:3.10` -> `docker.io/elasticserving/pause:3.10`, as containerd stores it."""
    return "docker.io/" + name


def _script_map(var: str) -> dict[str, str]:
    """A `declare -A var=([key]=value ...)` of the script (values may be quoted, span lines)."""
    m = re.search(rf"declare -A {var}=\((.*?)\)\n", SCRIPT.read_text(), re.S)
    assert m, f"{var} not declared in {SCRIPT.name}"
    return dict(re.findall(r'\[([\w-]+)\]=("[^"]*"|\S+)', m.group(1)))


def test_the_script_builds_every_target_from_its_dockerfile_under_its_names() -> None:
    dockerfiles = _script_map("dockerfile")
    stages = _script_map("stage")
    tags = {k: tuple(v.strip('"').split()) for k, v in _script_map("tags").items()}
    assert dockerfiles == {k: t.dockerfile for k, t in TARGETS.items()}
    assert stages == {k: t.stage for k, t in TARGETS.items() if t.stage}
    assert tags == {k: t.names for k, t in TARGETS.items()}
    for t in TARGETS.values():
        header = [line for line in (ROOT / t.dockerfile).read_text().splitlines() if "docker build" in line]
        # the `docker build` of its header builds the same names from the same stage
        build = next((line for line in header if f"-t {t.names[0]} " in line), "")
        assert build, f"{t.dockerfile}: no `docker build` of {t.names[0]}"
        assert all(f"-t {name} " in build for name in t.names), build
        assert (f"--target {t.stage} " in build) == bool(t.stage), build
        if t.stage:
            assert t.stage in _stages(t.dockerfile)
    default = re.search(r"^all=\(([^)]*)\)", SCRIPT.read_text(), re.M)
    assert default and set(default.group(1).split()) == set(BUILT_BY_DEFAULT)
    built = {n for t in BUILT_BY_DEFAULT.values() for n in t.names}
    assert {"elasticserving/runtime-lac:latest", "elasticserving/runtime:latest",
            "elasticserving/control-plane:latest", "elasticserving/pause:3.10"} <= built


def test_every_from_of_a_built_dockerfile_has_a_docker_less_recipe() -> None:
    """The script makes the FROM images with mmdebstrap (no registry): each one it meets needs a case."""
    text = SCRIPT.read_text()
    for dockerfile in {t.dockerfile for t in TARGETS.values()}:
        stages = _stages(dockerfile)
        for base, _ in stages.values():
            assert base == "scratch" or base in stages or re.search(rf"^\s*{re.escape(base)}\)", text, re.M), \
                f"{dockerfile}: FROM {base} has no recipe in {SCRIPT.name}"


def _stages(dockerfile: str) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name (its index when unnamed) -> (what it is FROM, its instructions), in order."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for word, args in _instructions(ROOT / dockerfile):
        if word == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            body: list[tuple[str, str]] = []
            stages[name] = (parts[0], body)
        else:
            body.append((word, args))
    return stages


def _final_config(dockerfile: str, stage: str | None = None) -> dict:
    """USER, EXPOSE, CMD, ENTRYPOINT, ENV, WORKDIR of a Dockerfile's stage (default: the last), as an
    OCI config says them: what it sets over what the stage it is FROM set."""
    stages = _stages(dockerfile)
    base, instructions = stages[stage or list(stages)[-1]]
    config: dict = _final_config(dockerfile, base) if base in stages else {}  # a new dict: ours to update
    for word, args in instructions:
        if word == "USER":
            config["User"] = args
        elif word == "EXPOSE":
            config.setdefault("ExposedPorts", {}).update({f"{p}/tcp": {} for p in args.split()})
        elif word in ("CMD", "ENTRYPOINT"):
            config[word.title()] = json.loads(args)
        elif word == "ENV":
            config.setdefault("Env", []).extend(shlex.split(args))
        elif word == "WORKDIR":
            config["WorkingDir"] = args
    return config


CONFIGS = [
    ("runtime-lac", "65532:65532", {"9292/tcp", "9293/tcp"},
     ["sh", "-c", 'exec python3 -m runtime --model lac --name lac --port "$PORT"'], None),
    ("runtime-models", "65532:65532", {"9292/tcp", "9293/tcp"},
     ["sh", "-c", 'exec python3 -m runtime --model efficientnet-lite0 --name image --port "$PORT"'], None),
    ("runtime-tf", "65532:65532", {"9292/tcp", "9293/tcp"},
     ["sh", "-c", 'exec python3 -m runtime --model "$MODEL_DIR" --name model --port "$PORT"'], None),
    ("control-plane", "65532:65532", {"8080/tcp", "8081/tcp", "8090/tcp"},
     ["python", "-m", "autoscaler.kube"], None),
    ("pause", "65535:65535", set(), None, ["/pause"]),
]


@pytest.mark.parametrize("name, user, ports, cmd, entrypoint", CONFIGS)
def test_dockerfile_config(name, user, ports, cmd, entrypoint) -> None:
    config = _final_config(TARGETS[name].dockerfile, TARGETS[name].stage)
    assert config.get("User") == user
    assert set(config.get("ExposedPorts", {})) == ports
    assert config.get("Cmd") == cmd
    assert config.get("Entrypoint") == entrypoint
    if name != "pause":
        env = dict(e.split("=", 1) for e in config["Env"])
        assert env["PYTHONUNBUFFERED"] == "1" and env["PIP_NO_CACHE_DIR"] == "1"
        assert config["WorkingDir"] == "/app"


def test_script_help_and_unknown_image() -> None:
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "scripts/build-images.sh [--import] [NAME...]" in out.stdout
    assert "set -euo" not in out.stdout  # only the header
    out = subprocess.run([str(SCRIPT), "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown image 'nonsense'" in out.stderr


def test_script_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    out = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


def _archive(path: Path) -> tuple[list[dict], dict, dict, set[str]]:
    """(index.json manifests, the image manifest, its config, the blob names) of an OCI archive."""
    with tarfile.open(path) as tar:
        files = set(tar.getnames())
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        entries = json.load(tar.extractfile("index.json"))["manifests"]
        assert len({e["digest"] for e in entries}) == 1, "one image under all its names"

        def blob(digest: str) -> dict:
            return json.load(tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1]))

        manifest = blob(entries[0]["digest"])
        config = blob(manifest["config"]["digest"])
    return entries, manifest, config, files


@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", ["pause", "control-plane"])
def test_build_images_writes_the_oci_archive(name: str) -> None:
    """scripts/build-images.sh NAME: buildah bud on the Dockerfile, an OCI archive containerd imports by
    name. pause always (when root with buildah; CI installs it); control-plane when built before or asked
    (ELASTICSERVING_BUILD_IMAGES, CI): a first build downloads its dependencies from PyPI."""
    ci = os.environ.get("CI")
    if name != "pause" and not (ci or os.environ.get("ELASTICSERVING_BUILD_IMAGES")
                                or (CACHE / "out" / f"{name}.tar").exists()):
        pytest.skip(f"{name} not built (scripts/build-images.sh {name}, or set ELASTICSERVING_BUILD_IMAGES=1)")
    if os.geteuid() != 0:
        _missing("building images needs root")
    if shutil.which("buildah") is None and not (ci and shutil.which("apt-get")):
        _missing("buildah not installed (apt-get install buildah, or run scripts/build-images.sh as root)")
    out = subprocess.run([str(SCRIPT), name], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert shutil.which("buildah"), "scripts/build-images.sh did not install buildah"
    names = TARGETS[name].names
    image, tarball = out.stdout.splitlines()[-1].split(" ", 1)
    assert image == names[0] and tarball == str(CACHE / "out" / f"{name}.tar")

    entries, manifest, config, files = _archive(Path(tarball))
    assert [e["annotations"]["io.containerd.image.name"] for e in entries] == [_full(n) for n in names]
    for layer in manifest["layers"]:
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        assert "blobs/sha256/" + layer["digest"].split(":", 1)[1] in files
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"])
    want = _final_config(TARGETS[name].dockerfile, TARGETS[name].stage)
    for key in ("User", "Cmd", "Entrypoint", "WorkingDir"):
        assert config["config"].get(key) == want.get(key), key
    assert set(config["config"].get("ExposedPorts", {})) == set(want.get("ExposedPorts", {}))
    if name == "pause":
        assert len(manifest["layers"]) == 1  # FROM scratch + the static binary only
    else:
        env = dict(e.split("=", 1) for e in config["config"]["Env"])
        assert env["PATH"].startswith("/opt/venv/bin:") and env["PYTHONUNBUFFERED"] == "1"
        # dependencies and code are separate layers: a code change rebuilds only the code ones
        assert len(manifest["layers"]) >= 5

    # Nothing changed: the second run reuses every layer and the archive.
    again = subprocess.run([str(SCRIPT), name], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == out.stdout
    assert "Using cache" in again.stderr and "writing" not in again.stderr
    assert _archive(Path(tarball))[1] == manifest


# --- The built images, run by a throwaway containerd + runc --------------------------------------------

LAC_REQUEST = {"feed": [{"words": "我爱北京天安门"}], "fetch": ["word_seg"]}
LAC_ANSWER = {"result": [{"word_seg": "我|爱|北京|天安门"}]}


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """IMAGE -> archive, from scripts/build-images.sh: run when the images were built before (it
    then only rebuilds what changed) or when ELASTICSERVING_BUILD_IMAGES / CI ask for a build."""
    if not (os.environ.get("ELASTICSERVING_BUILD_IMAGES") or os.environ.get("CI")) and not all(
            (CACHE / "out" / f"{name}.tar").exists() for name in BUILT_BY_DEFAULT):
        pytest.skip("images not built (scripts/build-images.sh, or set ELASTICSERVING_BUILD_IMAGES=1)")
    if os.geteuid() != 0:
        _missing("building and running images needs root")
    for tool in ("containerd", "ctr", "runc"):
        if shutil.which(tool) is None:
            _missing(f"{tool} not installed (apt-get install containerd runc)")
    out = subprocess.run([str(ROOT / "scripts/build-images.sh")], capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert set(lines) == {t.names[0] for t in BUILT_BY_DEFAULT.values()}
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
    want = {_full(n) for t in BUILT_BY_DEFAULT.values() for n in t.names}
    assert want <= names


@pytest.mark.timeout(900)
def test_runtime_image_serves_lac_as_non_root(containerd: Containerd) -> None:
    image = _full("elasticserving/runtime-lac:latest")
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


# Run inside the runtime image, on its own Python (Debian 12's 3.11.2 has no tarfile.data_filter): the
# storage initializer's tar path, a good archive with a link and a hostile one.
UNPACK_IN_IMAGE = """
import io, tarfile, tempfile
from pathlib import Path
from runtime.storage.archive import unpack
from runtime.storage.errors import StorageError
d = Path(tempfile.mkdtemp())
def tgz(name, members):
    with tarfile.open(d / name, "w:gz") as t:
        for member, kind, link, data in members:
            info = tarfile.TarInfo(member)
            info.type, info.linkname, info.mode, info.size = kind, link, 0o644, len(data)
            t.addfile(info, io.BytesIO(data))
    return d / name
(d / "good").mkdir()
(d / "bad").mkdir()
n = unpack(tgz("g.tgz", [("m/a.json", tarfile.REGTYPE, "", b"{}"), ("m/l", tarfile.SYMTYPE, "a.json", b"")]),
           d / "good", 10000)
print("unpacked", n, (d / "good/m/l").read_text())
try:
    unpack(tgz("b.tgz", [("../evil", tarfile.REGTYPE, "", b"x")]), d / "bad", 10000)
except StorageError as exc:
    print("refused:", exc)
"""


def test_runtime_image_unpacks_tar_archives_on_its_own_python(containerd: Containerd) -> None:
    image = _full("elasticserving/runtime-lac:latest")
    out = containerd.ctr("run", "--rm", image, _cid("unpack"), "python3", "-c", UNPACK_IN_IMAGE).stdout
    assert "unpacked 2 {}" in out, out
    assert "refused: unsafe archive member '../evil': its path leaves the target" in out, out


def _tail(f) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")[-3000:]


@pytest.mark.timeout(600)
def test_control_plane_image_starts(containerd: Containerd) -> None:
    image = _full("elasticserving/control-plane:latest")
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
    image = _full("elasticserving/pause:3.10")
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
