"""The test stack: started once per session by the first test that needs it, stopped at the end."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # the tests start servers with subprocess
import uuid

import grpc
import pytest

from devstack.stack import Stack, test_spec


@pytest.fixture(scope="session")
def stack():
    s = Stack(test_spec())
    try:
        s.up()
    except BaseException:
        s.down()
        raise
    yield s
    if os.environ.get("RUNTRACK_KEEP_TEST_STACK") != "1":
        s.down()


@pytest.fixture
async def channel(stack):
    """A gRPC channel to Envoy's public listener."""
    async with grpc.aio.insecure_channel(stack.envoy_address) as ch:
        yield ch


@pytest.fixture
def run_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def user_id() -> str:
    return f"runner-{uuid.uuid4().hex[:12]}"
