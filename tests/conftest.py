"""The test stack: started once per session by the first test that needs it, stopped at the end."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # the tests start servers with subprocess
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest

from devstack.paths import ROOT
from devstack.stack import Stack, test_spec
from tests.helpers import token_channel

# `RUNTRACK_TEST_LANES=2 scripts/test` runs two lanes at once (pytest-xdist, two workers). One holds every
# test of the test stack (tests/integration and tests/e2e); the other the stores as clusters (three CQL
# nodes, two PostgreSQL nodes), the backup drills and then the local Kubernetes cluster (built on a
# fresh machine while the stores' tests run), each on ports of its own. The pure tests go to whichever
# lane is free first.
OTHER_STORES = (
    "tests/k8s/",
    "tests/integration/test_backup_restore.py",
    "tests/integration/test_cluster.py",
    "tests/integration/test_pg_sync_commit.py",
)


def lane(nodeid: str) -> str | None:
    """The lane a test runs in, or None: either."""
    if nodeid.startswith(OTHER_STORES):
        return "other-stores"
    if nodeid.startswith(("tests/integration/", "tests/e2e/")):
        return "test-stack"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scheduling by scope (each scope's tests on one worker, largest scope first), the
    scopes being the lanes; a test of neither lane is a scope of its own."""
    from xdist.scheduler import LoadScopeScheduling

    class Lanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid) or nodeid

        def _assign_work_unit(self, node: Any) -> None:
            # As xdist's, but by position: Schemathesis collects one item per API operation, all under
            # one node id, and xdist's version (a dict by node id, then list.index) runs only the first.
            scope, unit = self.workqueue.popitem(last=False)
            self.assigned_work.setdefault(node, {})[scope] = unit
            collection = self.registered_collections[node]
            node.send_runtest_some([i for i, nodeid in enumerate(collection) if unit.get(nodeid) is False])

    return Lanes(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that read traces (marked `traces`) run last, in their order: on a fresh machine the
    test stack's Jaeger is built meanwhile (tests/prebuild.py) instead of holding up the first tests."""
    items.sort(key=lambda item: item.get_closest_marker("traces") is not None)


PREBUILD_LOG = ROOT / ".dev" / "logs" / "prebuild.log"
_prebuild: subprocess.Popen[bytes] | None = None


def pytest_collection_finish(session: pytest.Session) -> None:
    """A session holding the Kubernetes tests builds what its later tests need while its first ones
    run (tests/prebuild.py; one lane's worth, whichever lane layout), at the lowest CPU and disk
    priority."""
    global _prebuild
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" or session.config.option.collectonly:
        return
    if os.environ.get("RUNTRACK_PREBUILD") == "0" or not any(i.nodeid.startswith("tests/k8s/") for i in session.items):
        return
    PREBUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(PREBUILD_LOG, "ab") as log:
        _prebuild = subprocess.Popen(
            # Below every test: CPU only when no test wants it (SCHED_IDLE), the disk likewise.
            ["chrt", "--idle", "0", "ionice", "-c", "3", sys.executable, "-m", "tests.prebuild"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A build still going when the session ends (its tests deselected or failed early) is stopped;
    what it finished stays in the cache."""
    if _prebuild is not None and _prebuild.poll() is None:
        os.killpg(_prebuild.pid, signal.SIGTERM)
        try:
            _prebuild.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(_prebuild.pid, signal.SIGKILL)
            _prebuild.wait()


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
