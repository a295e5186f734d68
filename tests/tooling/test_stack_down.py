"""`scripts/dev down` forgets the CQL node count and the replica counts: a plain `up` afterwards
starts the documented defaults."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from devstack.stack import Stack
from devstack.stack import test_spec as stack_spec_for_tests


def test_down_forgets_the_node_count_and_the_replica_counts(tmp_path: Path) -> None:
    spec = replace(
        stack_spec_for_tests({}), name="forget", state=tmp_path / "state", logs=tmp_path / "logs", cql_nodes=None
    )
    run = spec.state / "run"
    run.mkdir(parents=True)
    (run / "cql-nodes").write_text("3")
    (run / "replicas.json").write_text(json.dumps({"tracking": [51110], "summary": [51210]}))
    before = Stack(spec)
    assert len(before.cql_nodes) == 3
    assert before.replica_ports() == {"tracking": [51110], "summary": [51210]}

    before.down()  # nothing runs: it only forgets

    after = Stack(spec)
    assert len(after.cql_nodes) == 1
    assert after.replica_ports() == {"tracking": [], "summary": []}
