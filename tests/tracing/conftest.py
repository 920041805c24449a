"""The tracing tests' one real Jaeger (tests/tracing/jaeger_server.py), started once per session on
loopback only when a test asks for `jaeger`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.tracing.jaeger_server import Jaeger, require_jaeger, run_jaeger


@pytest.fixture(scope="session")
def jaeger(tmp_path_factory) -> Iterator[Jaeger]:
    with run_jaeger(require_jaeger(), tmp_path_factory.mktemp("jaeger")) as j:
        yield j
