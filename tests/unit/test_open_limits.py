"""Counting streams open at once per runner or link (tracking_service/open_limits.py)."""

import pytest

from runtrack_common import status
from runtrack_common.errors import ResourceExhausted
from tracking_service.open_limits import OpenCounts, parse_limit


def test_the_limit_header_is_a_positive_integer_or_no_limit():
    assert parse_limit("4") == 4
    assert parse_limit(" 100 ") == 100
    for text in ("", "0", "-1", "four", "4.5", "1e3"):
        assert parse_limit(text) is None, text


def test_one_more_than_the_limit_is_refused_until_one_leaves_and_keys_are_apart():
    counts = OpenCounts("record_streams", "this runner", "RecordTrack streams")
    assert all(counts.enter("ann", 2) for _ in range(2))
    with pytest.raises(ResourceExhausted) as refused:
        counts.enter("ann", 2)
    assert counts.enter("bob", 2) and counts.open("bob") == 1
    counts.leave("ann")
    assert counts.enter("ann", 2) and counts.open("ann") == 2
    for _ in range(2):
        counts.leave("ann")
    assert counts.open("ann") == 0
    assert not counts.enter("ann", None) and counts.open("ann") == 0  # no limit: not counted

    sent = status.to_status(refused.value)
    assert sent.code == 8  # RESOURCE_EXHAUSTED
    assert "this runner has 2 RecordTrack streams open" in sent.message
    kinds = [d.type_url.rsplit(".", 1)[-1] for d in sent.details]
    assert kinds == ["ErrorInfo", "RetryInfo"]


def test_each_call_falls_in_one_limit_family_whatever_its_query_string():
    """Envoy matches the families' regexes against the whole :path, as re.fullmatch does."""
    import re

    from edge.config import FAMILY_PATHS

    def family(path: str) -> str:
        found = [name for name, regex in FAMILY_PATHS.items() if re.fullmatch(regex, path)]
        assert len(found) <= 1, (path, found)
        return found[0] if found else "calls"

    run = "0d9a54c5-3f7e-4a39-9e0b-2f1f4b0c6d11"
    assert family("/runtrack.v1.TrackingService/RecordTrack") == "stream_opens"
    assert family("/runtrack.v1.TrackingService/WatchRun") == "stream_opens"
    assert family(f"/v1/runs/{run}:watch") == "stream_opens"
    assert family(f"/v1/runs/{run}:watch?afterSeq=12") == "stream_opens"
    assert family("/runtrack.v1.SummaryService/ImportRun") == "files"
    assert family("/runtrack.v1.TrackingService/ExportTrack") == "files"
    assert family("/v1/runs:import") == "files"
    assert family(f"/v1/runs/{run}/track.gpx") == "files"
    assert family(f"/v1/runs/{run}/track.tcx?download=1") == "files"
    assert family("/runtrack.v1.SummaryService/GetRun") == "calls"
    assert family(f"/v1/runs/{run}") == "calls"
    assert family("/v1/users/me/runs?pageSize=20") == "calls"
    assert family(f"/v1/runs/{run}:stop") == "calls"
