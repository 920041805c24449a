"""The Dockerfiles under images/ (Docker is not available here): every COPY source and referenced
script exists in the build context (the repository root), every image the manifests and the LAC
example use is built by one of them, and the modules they run exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

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
    for f in list((ROOT / "deploy").glob("*.yaml")) + [ROOT / "examples/lac.yaml"]:
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
