"""The README's demo, run verbatim against the test stack (only Envoy's address and CA differ)."""

from tests.helpers import run_readme_demo, without_analysis


def test_the_readme_demo_streams_a_run_and_reads_it_back_as_json(stack):
    # `scripts/dev token` signs with the test stack's key when RUNTRACK_STACK=test.
    # grpcurl prints the RecordTrack response (multi-line JSON), then one JSON document per curl.
    # Over TLS, by the address the certificate names (127.0.0.1), trusting the test stack's CA.
    address = f"127.0.0.1:{stack.spec.envoy_tls_port}"
    docs = run_readme_demo(address, str(stack.tls_ca), {"RUNTRACK_STACK": "test"})
    recorded, stopped, listed, track, stats, zones, shared, seen_by_bob, refused = docs
    # grpcurl prints proto field names; Envoy's JSON uses lowerCamelCase.
    assert recorded["points_stored"] == 3 and recorded["contiguous_seq"] == 3
    assert stopped["trackUrl"] == f"/v1/runs/{recorded['run_id']}/track"
    # The list may already carry the analysis the server computed after StopRun answered.
    assert without_analysis(stopped) in [without_analysis(r) for r in listed["runs"]]
    assert [p["seq"] for p in track["points"]] == [1, 2, 3]
    assert len(stats["weeks"]) == 4 and stats["totalRuns"] >= 1
    assert stopped["userId"] == "ada" and zones["zones"][0]["radiusM"] == 150
    assert shared["visibility"] == "PUBLIC"
    assert [p["seq"] for p in seen_by_bob["points"]] == [2, 3], "bob saw the point at ada's door"
    assert refused["code"] == 16 and refused["message"] == "Jwt is missing"
