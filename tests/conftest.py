"""The test stack: started once per session by the first test that needs it, stopped at the end."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # the tests start servers with subprocess
import uuid

import pytest

from devstack.stack import Stack, test_spec
from tests.helpers import token_channel


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
def token(stack, user_id) -> str:
    """A valid token for `user_id`, signed by the test stack's key."""
    return stack.issuer.token(user_id)


@pytest.fixture
async def channel(stack, token):
    """A gRPC channel to Envoy's public listener, signed in as `user_id`."""
    async with token_channel(stack.envoy_address, token) as ch:
        yield ch


@pytest.fixture
def run_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def user_id() -> str:
    return f"runner-{uuid.uuid4().hex[:12]}"
