"""Pid files name one process: a pid given to another process since is not taken for ours."""

import os
import sys

from devstack import procs


def test_a_started_process_is_found_by_its_pid_file_and_not_after_it_is_gone(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    pid = procs.start(
        [sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "sleeper.log", pid_file=pid_file
    )
    try:
        assert procs.read_pid(pid_file) == pid and procs.alive(pid)
    finally:
        procs.stop(pid, timeout=5)
    assert not procs.alive(pid)


def test_a_pid_now_held_by_another_process_is_not_ours(tmp_path):
    pid_file = tmp_path / "stale.pid"
    me, began = os.getpid(), procs.start_time(os.getpid())
    assert began is not None and began.isdigit()
    pid_file.write_text(f"{me} {int(began) + 1}\n")  # our pid, but a process that began at another time
    assert procs.read_pid(pid_file) is None
    pid_file.write_text(f"{me} {began}\n")
    assert procs.read_pid(pid_file) == me


def test_a_pid_file_with_a_pid_alone_is_taken_as_is(tmp_path):
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n/var/lib/data\n")
    assert procs.read_pid(pid_file) == os.getpid()


def test_a_missing_or_garbled_pid_file_names_no_process(tmp_path):
    assert procs.read_pid(tmp_path / "none.pid") is None
    (tmp_path / "bad.pid").write_text("not-a-pid\n")
    assert procs.read_pid(tmp_path / "bad.pid") is None


def test_reserved_port_ranges_merge_with_what_the_kernel_has():
    from devstack.procs import merge_port_ranges

    assert merge_port_ranges("", [(51110, 51209), (18080, 18080)]) == "18080,51110-51209"
    assert merge_port_ranges("8080,51200-51300\n", [(51110, 51209), (8081, 8081)]) == "8080-8081,51110-51300"
    assert merge_port_ranges("1-5", []) == "1-5"
