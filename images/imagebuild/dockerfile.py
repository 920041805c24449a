"""The Dockerfiles under images/ read as data: instructions and the image config they set.

First stop of the Docker-less build (scripts/build-images.sh): its output drives the layer steps
(COPY, RUN) and the OCI config (ENV, WORKDIR, USER, EXPOSE, CMD, ENTRYPOINT). Pure, no I/O but reading.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

# What the build knows how to execute; anything else is refused rather than silently skipped.
LAYER_WORDS = ("COPY", "RUN")
CONFIG_WORDS = ("ENV", "WORKDIR", "USER", "EXPOSE", "CMD", "ENTRYPOINT", "LABEL")


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True)
class Instruction:
    word: str
    args: str

    def text(self) -> str:
        return f"{self.word} {self.args}"


@dataclass
class ImageConfig:
    """The parts of an OCI image config a Dockerfile sets (names as in the OCI spec)."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    exposed: list[str] = field(default_factory=list)
    cmd: list[str] | None = None
    entrypoint: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def copy(self) -> ImageConfig:
        return ImageConfig(dict(self.env), self.workdir, self.user, list(self.exposed),
                           None if self.cmd is None else list(self.cmd),
                           None if self.entrypoint is None else list(self.entrypoint), dict(self.labels))

    def to_oci(self) -> dict:
        out: dict = {"Env": [f"{k}={v}" for k, v in self.env.items()], "WorkingDir": self.workdir}
        if self.user:
            out["User"] = self.user
        if self.exposed:
            out["ExposedPorts"] = {p: {} for p in self.exposed}
        if self.entrypoint is not None:
            out["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            out["Cmd"] = self.cmd
        if self.labels:
            out["Labels"] = self.labels
        return out


def parse(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append(Instruction(word.upper(), rest.strip()))
    if not out or out[0].word != "FROM":
        raise DockerfileError("a Dockerfile starts with FROM")
    return out


def read(path: Path) -> list[Instruction]:
    return parse(path.read_text())


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def _exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT: the JSON (exec) form as is, the shell form wrapped in `/bin/sh -c`."""
    if args.startswith("["):
        try:
            value = json.loads(args)
        except json.JSONDecodeError as exc:
            raise DockerfileError(f"bad JSON in {args!r}: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"exec form must be a list of strings: {args!r}")
        return value
    return ["/bin/sh", "-c", args]


def apply(config: ImageConfig, ins: Instruction) -> None:
    """Apply one config instruction (ENV, WORKDIR, ...) to `config` in place."""
    if ins.word == "ENV":
        parts = shlex.split(ins.args)
        if parts and "=" not in parts[0]:  # legacy `ENV KEY value with spaces`
            key, _, value = ins.args.partition(" ")
            config.env[key] = value.strip()
            return
        for part in parts:
            key, eq, value = part.partition("=")
            if not eq:
                raise DockerfileError(f"ENV expects KEY=VALUE, got {part!r}")
            config.env[key] = _expand(value, config.env)
    elif ins.word == "WORKDIR":
        path = _expand(ins.args, config.env)
        config.workdir = path if path.startswith("/") else str(Path(config.workdir) / path)
    elif ins.word == "USER":
        config.user = _expand(ins.args, config.env)
    elif ins.word == "EXPOSE":
        for port in ins.args.split():
            config.exposed.append(port if "/" in port else f"{port}/tcp")
    elif ins.word == "CMD":
        config.cmd = _exec_form(ins.args)
    elif ins.word == "ENTRYPOINT":
        config.entrypoint = _exec_form(ins.args)
        config.cmd = None  # Docker resets CMD when ENTRYPOINT is set
    elif ins.word == "LABEL":
        for part in shlex.split(ins.args):
            key, _, value = part.partition("=")
            config.labels[key] = value
    else:
        raise DockerfileError(f"{ins.word} is not a config instruction")


def copy_args(ins: Instruction, workdir: str) -> tuple[list[str], str]:
    """COPY's sources (relative to the build context) and its absolute destination."""
    parts = shlex.split(ins.args) if not ins.args.startswith("[") else json.loads(ins.args)
    if any(p.startswith("--") for p in parts):
        raise DockerfileError(f"COPY flags are not supported by this build: {ins.args}")
    if len(parts) < 2:
        raise DockerfileError(f"COPY needs a source and a destination: {ins.args}")
    *sources, dest = parts
    if not dest.startswith("/"):
        dest = (workdir.rstrip("/") + "/" + dest) if dest not in (".", "./") else workdir.rstrip("/") + "/"
    if len(sources) > 1 and not dest.endswith("/"):
        raise DockerfileError(f"COPY with several sources needs a directory destination: {ins.args}")
    return sources, dest


@dataclass(frozen=True)
class DockerIgnore:
    """`.dockerignore` patterns (the subset we use: globs, `**/` prefixes, no `!` exceptions)."""

    patterns: tuple[str, ...] = ()

    @classmethod
    def load(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        if not path.exists():
            return cls()
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        pats = tuple(ln.strip("/") for ln in lines if ln and not ln.startswith("#"))
        if any(p.startswith("!") for p in pats):
            raise DockerfileError(".dockerignore exceptions (!) are not supported by this build")
        return cls(pats)

    def ignored(self, rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pat in self.patterns:
            alts = (pat, pat[3:]) if pat.startswith("**/") else (pat,)
            for p in prefixes:
                name = p.rsplit("/", 1)[-1]
                if any(fnmatch.fnmatchcase(p, a) for a in alts) or (
                        pat.startswith("**/") and fnmatch.fnmatchcase(name, pat[3:])):
                    return True
        return False
