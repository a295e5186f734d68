import filecmp
import tempfile
from pathlib import Path

import pytest

from devstack import gen_protos
from devstack.paths import GENERATED, ROOT
from runtrack_common import page_tokens, queries
from runtrack_common.config import Settings
from runtrack_common.errors import InvalidArgument


def test_page_tokens_round_trip_only_for_their_method_and_scope():
    token = page_tokens.encode("track", "run-a", [42])
    assert page_tokens.decode(token, "track", "run-a") == [42]
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(token, "track", "run-b")
    with pytest.raises(InvalidArgument, match="page_token"):
        page_tokens.decode(token, "runs", "run-a")
    for garbled in ["%%%", token[:-3], "bnVsbA", ""]:
        with pytest.raises(InvalidArgument, match="page_token"):
            page_tokens.decode(garbled, "track", "run-a")


def test_named_query_blocks_load_without_comments_or_semicolons(tmp_path):
    f = tmp_path / "q.sql"
    f.write_text("-- name: one\n-- a comment\nSELECT 1;\n\n-- name: two\nSELECT\n  2;\n")
    assert queries.load(f) == {"one": "SELECT 1", "two": "SELECT\n  2"}


def test_every_service_query_file_loads():
    for path in ["tracking_service/queries.cql", "tracking_service/schema.cql", "summary_service/queries.sql"]:
        assert queries.load(ROOT / path)


def test_settings_come_from_the_environment():
    s = Settings.from_env(
        {"SCYLLA_HOSTS": "10.0.0.1, 10.0.0.2", "SCYLLA_PORT": "9043", "DATABASE_URL": "postgresql://x/y"}
    )
    assert s.scylla_hosts == ("10.0.0.1", "10.0.0.2") and s.scylla_port == 9043 and s.database_url == "postgresql://x/y"
    with pytest.raises(SystemExit, match="SCYLLA_PORT"):
        Settings.from_env({"SCYLLA_PORT": "many"})


def test_generated_files_match_the_protos():
    with tempfile.TemporaryDirectory() as tmp:
        gen_protos.generate(Path(tmp))
        cmp = filecmp.dircmp(tmp, GENERATED)
        stale: list[str] = []

        def walk(c, prefix=""):
            stale.extend(prefix + n for n in c.left_only + c.right_only + c.diff_files if n != "__pycache__")
            for name, sub in c.subdirs.items():
                if name != "__pycache__":
                    walk(sub, prefix + name + "/")

        walk(cmp)
        assert not stale, f"generated/ is stale, run scripts/gen-protos: {stale}"


def test_a_replica_takes_as_many_streams_on_one_connection_as_envoy_opens_on_one():
    from edge.config import Layout

    assert Settings().max_streams_per_connection == Layout().max_concurrent_streams
    assert Settings.from_env({"GRPC_MAX_CONCURRENT_STREAMS": "500"}).max_streams_per_connection == 500
