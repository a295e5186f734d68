"""An import's memory, measured in the process the way a summary replica runs it (its modules loaded,
the request's body held, `activity_files.prepare` on threads), and capped like the summary pod: a cgroup
whose memory limit is the chart's (deploy/helm/runtrack/values.yaml). Four 16 MiB imports at once,
GPX and TCX as watches write them and GPX at its densest (100,000 points), finish without the kernel
killing the process; one import costs at most activity_files.MAX_MEMORY_MULTIPLE times its file, and any
import at most that times the size limit (a FIT file is small for its points). A cap too small for
four kills them: the cap is real. Needs root (a cgroup of its own); no stack."""

import pytest

from bench import imports as bench_imports
from devstack.memcap import pod_memory_limit
from summary_service.activity_files import MAX_FILE_BYTES, MAX_MEMORY_MULTIPLE, MAX_POINTS

MIB = 2**20


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return bench_imports.files(tmp_path_factory.mktemp("imports"))


@pytest.mark.parametrize("name", ["gpx", "tcx", "gpx densest"])
def test_four_16_mib_imports_at_once_fit_under_the_summary_pods_memory_limit(files, name):
    limit = pod_memory_limit("summary")
    assert limit == 512 * MIB, "the chart's limit changed: this test's figures are for 512 MiB"
    doc = bench_imports.measure(files[name], 4, limit)
    assert doc["returncode"] == 0 and not doc["killed"], doc
    assert doc["file_bytes"] > MAX_FILE_BYTES - 64 * 1024, "a file at the size limit"
    assert len(doc["points"]) == 4 and len(set(doc["points"])) == 1
    if name == "gpx densest":
        assert doc["points"][0] == MAX_POINTS
    assert doc["cgroup_peak_mib"] < limit / MIB


@pytest.mark.parametrize("name", ["gpx", "tcx", "gpx densest", "fit"])
def test_one_import_costs_at_most_the_stated_multiple_of_its_file(files, name):
    doc = bench_imports.measure(files[name])
    size_mib = doc["file_bytes"] / MIB
    if name == "fit":  # 100,000 records in ~1.9 MB: bounded by the points, not the bytes
        assert doc["increase_mib"] <= MAX_MEMORY_MULTIPLE * MAX_FILE_BYTES / MIB, doc
    else:
        assert doc["increase_mib"] <= MAX_MEMORY_MULTIPLE * size_mib, doc


def test_a_cap_too_small_for_four_imports_kills_them(files):
    doc = bench_imports.measure(files["gpx densest"], 4, 160 * MIB)
    assert doc["killed"] and doc["oom_kills"] >= 1, doc
