"""PostgreSQL as two nodes (devstack/pg_cluster.py): Patroni's configuration as rendered, checked by
Patroni's own validator, and what the stacks make of `--pg-nodes`."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

from devstack import pg_cluster, procs
from devstack.paths import VENV_BIN
from devstack.pg_cluster import TIMINGS, PatroniNode, multi_host_url, patroni_config, ports
from devstack.stack import Stack, cluster_test_spec, dev_spec
from devstack.stack import test_spec as stack_spec_for_tests


def config(tmp_path: Path, pg_port: int = 25432, rest_port: int = 25442) -> dict:
    node = PatroniNode("pg1", tmp_path / "pg1", pg_port=pg_port, rest_port=rest_port)
    return patroni_config(scope="runtrack-test", node=node, etcd_port=25452, bin_dir=tmp_path / "bin")


def test_the_standby_is_synchronous_but_not_strict_and_a_former_primary_rewinds(tmp_path):
    dcs = config(tmp_path)["bootstrap"]["dcs"]
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs["postgresql"]["parameters"]["wal_log_hints"] == "on"


def test_the_timings_are_short_and_within_patronis_rules():
    # Patroni raises a smaller value to its floor, and shortens loop_wait when the rule is broken.
    assert TIMINGS["ttl"] >= 20 and TIMINGS["retry_timeout"] >= 3 and TIMINGS["loop_wait"] >= 1
    assert TIMINGS["loop_wait"] + 2 * TIMINGS["retry_timeout"] <= TIMINGS["ttl"]
    assert TIMINGS["ttl"] <= 20, "a failover waits for the leader key to expire: keep it short"


def test_each_node_has_ports_of_its_own_and_clients_name_both():
    p = ports(25432)
    assert p == {"pg1": 25432, "pg2": 25433, "pg1-rest": 25442, "pg2-rest": 25443, "etcd": 25452, "etcd-peer": 25453}
    assert len(set(p.values())) == len(p)
    assert (
        multi_host_url(["127.0.0.1:25432", "127.0.0.1:25433"], "runtrack")
        == "postgresql://postgres@127.0.0.1:25432,127.0.0.1:25433/runtrack?target_session_attrs=read-write"
    )


def test_patronis_own_validator_takes_the_configuration(tmp_path):
    """`patroni --validate-config`: every key known, each value of its type, the binaries where
    bin_dir says. It refuses a loopback connect_address, meant for nodes on several machines (here
    both nodes are on this one, and 127.0.0.1 is the point), and an etcd that does not answer now."""
    bin_dir = Path(pg_cluster._embedded()._commands.POSTGRES_BIN_PATH)
    doc = config(tmp_path, pg_port=procs.free_port(), rest_port=procs.free_port())
    doc["postgresql"]["bin_dir"] = str(bin_dir)
    path = tmp_path / "patroni.yml"
    path.write_text(pg_cluster.to_yaml(doc))
    out = subprocess.run(
        [str(VENV_BIN / "patroni"), "--validate-config", str(path)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "didn't pass validation" in line]
    assert complaints, "the validator ran"
    expected = [line for line in complaints if "is not reachable" in line or "must not contain" in line]
    assert complaints == expected, complaints


def test_the_yaml_is_json_patroni_reads_as_yaml(tmp_path):
    import yaml

    doc = config(tmp_path)
    assert yaml.safe_load(pg_cluster.to_yaml(doc)) == json.loads(json.dumps(doc))


def test_one_node_stays_the_default_and_the_cluster_tests_run_two(tmp_path):
    dev = Stack(replace(dev_spec({}), state=tmp_path / "dev", logs=tmp_path / "logs"))
    assert dev.pg_cluster is None and dev.pg_nodes == 1
    assert dev.database_url == "postgresql://postgres@127.0.0.1:5432/runtrack"
    two = Stack(replace(cluster_test_spec(), state=tmp_path / "cluster", logs=tmp_path / "logs"))
    assert two.pg_nodes == 2
    assert two.database_url.endswith("@127.0.0.1:25432,127.0.0.1:25433/runtrack?target_session_attrs=read-write")
    assert {(25433, 25433), (25442, 25442), (25452, 25452)} <= set(two.listening_ports())


def test_later_commands_remember_two_nodes_until_down(tmp_path):
    spec = replace(stack_spec_for_tests({}), name="remember", state=tmp_path / "state", logs=tmp_path / "logs")
    (spec.state / "run").mkdir(parents=True)
    (spec.state / "run" / "pg-nodes").write_text("2")
    assert Stack(spec).pg_nodes == 2
    Stack(spec).down()  # nothing runs: it only forgets
    assert Stack(spec).pg_nodes == 1
