"""Detached processes with a log file and a pid file each, and small waits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devstack.paths import once_per_machine


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def start_time(pid: int) -> str | None:
    """When the process began, in clock ticks since boot (/proc/PID/stat field 22): with the pid, it
    names one process, where a pid alone may have been given to another since."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_pid(pid_file: Path) -> int | None:
    """The pid a pid file names, or None when that process is gone and the pid now belongs to another
    (its first line holds the start time too). A first line with a pid alone (PostgreSQL's own file) is
    taken as is."""
    try:
        fields = pid_file.read_text().split("\n", 1)[0].split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) > 1 and start_time(pid) != fields[1]:
        return None
    return pid


def start(
    argv: Sequence[str],
    *,
    log: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Starts `argv` in its own session, output appended to `log`; returns its pid. As `user`, if named
    (with that user's own group alone, not root's)."""
    group: int | None = None
    if user is not None:
        import pwd

        group = pwd.getpwnam(user).pw_gid
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            user=user,
            group=group,
            extra_groups=None if user is None else [],
        )
    pid_file.write_text(f"{proc.pid} {start_time(proc.pid)}\n")
    return proc.pid


def stop(pid: int | None, *, timeout: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Signals the process group of `pid`, then kills it if it outlives `timeout`."""
    if pid is None or not alive(pid):
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def free_port() -> int:
    """A loopback TCP port no one listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, *, log: Path | None = None, pid: int | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            break
        time.sleep(0.25)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        tail = f"\n--- last lines of {log} ---\n{tail}"
    state = "exited" if pid is not None and not alive(pid) else f"not ready after {timeout:.0f}s"
    raise RuntimeError(f"{what} {state}{tail}")


def memory_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")


def merge_port_ranges(current: str, ranges: list[tuple[int, int]]) -> str:
    """`current` (the kernel's "a,b-c" list) with `ranges` added, merged and sorted."""
    spans: list[tuple[int, int]] = list(ranges)
    for part in current.replace("\n", "").split(","):
        part = part.strip()
        if part:
            first, _, last = part.partition("-")
            spans.append((int(first), int(last or first)))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(spans):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in merged)


def reserve_ports(ranges: list[tuple[int, int]]) -> None:
    """Keeps the kernel from handing these ports out as the local end of outgoing connections, where
    it can (as root): a busy machine (thousands of client connections) then never takes a port a
    server of ours is about to listen on. Without root, nothing changes."""
    try:
        with once_per_machine("reserved-ports"):  # read, merged and written by one process at a time
            current = RESERVED_PORTS.read_text()
            wanted = merge_port_ranges(current, ranges)
            if wanted != current.strip():
                RESERVED_PORTS.write_text(wanted)
    except OSError:
        pass
