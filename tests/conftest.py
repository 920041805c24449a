"""Fixtures shared by every test directory (storage, e2e, cluster): one real S3-compatible server
(SeaweedFS, tests/s3_server.py) per session on loopback, started only when a test asks for `s3_server`;
without the weed binary such a test skips (or fails when CI is set). And the activator harness's
(tests/activator/harness.py) front door `setup` (limits: `front_limits`) and fake autoscaler `control`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from activator.limits import FrontLimits
from tests.activator.harness import FakeControl, Setup
from tests.s3_server import S3Server, require_weed, run_s3_server

_started: list[S3Server] = []


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A running SeaweedFS S3 gateway: admin keys, a read-only identity, MinIO clients and helpers."""
    with run_s3_server(require_weed()) as server:
        _started.append(server)
        yield server


@pytest.fixture
def front_limits() -> FrontLimits | None:
    """The limits of `setup`'s front door (None: the harness's); a module that tests them overrides this."""
    return None


@pytest.fixture
async def setup(front_limits: FrontLimits | None) -> AsyncIterator[Setup]:
    s = Setup(front_limits)
    await s.start()
    yield s
    s.close()


@pytest.fixture
async def control() -> AsyncIterator[FakeControl]:
    c = FakeControl()
    await c.start()
    yield c
    await c.close()


def pytest_terminal_summary(terminalreporter) -> None:
    for server in _started:
        terminalreporter.write_line(f"S3 server (SeaweedFS) writable {server.start_seconds:.2f}s after start "
                                    f"(a signed ListBuckets answered after {server.answer_seconds:.2f}s)")
