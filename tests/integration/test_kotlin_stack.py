"""The phone's library against the real test stack: the Kotlin JUnit 5 tests tagged `stack`
(clients/kotlin/src/test/kotlin/dev/runtrack/client/stack/, `mvn -Pstack test`; `verify` leaves them
out) run here, against the test stack's Envoy over TLS with its CA. They record runs with RunRecorder
and read them back through the API: every point stored once, the overview against the server's
analysis, STOP RUN sent twice, an expired token refreshed through the hook, live links created,
followed and revoked, a stranger refused, and the app's state on the way.

This side describes the stack to them (-Druntrack.endpoint, -Druntrack.ca, -Druntrack.tokens: a
properties file of fresh runners and tokens signed by the stack's key, one of them already expired),
then holds Maven's verdict and Surefire's counts to what the Kotlin side has: a test failing, erroring,
skipped, added or lost there fails this one."""

from __future__ import annotations

import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from devstack.paths import ROOT

KOTLIN = ROOT / "clients" / "kotlin"
# The `stack` profile builds in target/stack/ (pom.xml says why).
REPORTS = KOTLIN / "target" / "stack" / "surefire-reports"
# Every stack test class and how many tests it holds.
STACK_TESTS = {
    "RecordingStackTest": 2,
    "StopRunStackTest": 1,
    "TokenRefreshStackTest": 2,
    "LiveLinksStackTest": 1,
    "StrangerStackTest": 1,
}
# The runners the Kotlin tests ask for by role; those in EXPIRED also get a token whose exp has passed
# (2 minutes ago: beyond Envoy's 30 s of clock skew).
ROLES = ("runner", "refresher", "linker", "victim", "stranger")
EXPIRED = ("refresher",)


def tokens_file(stack, directory: Path) -> Path:
    """`user.ROLE`, `token.ROLE` (and `expired.ROLE`) for fresh runners of this test."""
    prefix = f"kotlin-{uuid.uuid4().hex[:8]}"
    lines = []
    for role in ROLES:
        user = f"{prefix}-{role}"
        lines += [f"user.{role}={user}", f"token.{role}={stack.issuer.token(user, ttl_s=900)}"]
        if role in EXPIRED:
            lines.append(f"expired.{role}={stack.issuer.token(user, ttl_s=-120)}")
    path = directory / "tokens.properties"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def surefire_reports() -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per test class of this run's reports: tests, failures, errors, skipped; and each test that did
    not pass, with the start of its message."""
    counts, failed = {}, []
    for report in sorted(REPORTS.glob("TEST-*.xml")):
        suite = ET.parse(report).getroot()
        name = suite.get("name", report.stem).rsplit(".", 1)[-1]
        counts[name] = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
        for case in suite.iter("testcase"):
            for outcome in ("failure", "error", "skipped"):
                if (found := case.find(outcome)) is not None:
                    message = found.get("message") or found.text or ""
                    failed.append(f"{name}.{case.get('name')}: {outcome}: {message[:1500]}")
    return counts, failed


def test_the_kotlin_librarys_stack_tests_pass_against_the_test_stack(stack, tmp_path):
    tokens = tokens_file(stack, tmp_path)
    for old in REPORTS.glob("TEST-*.xml"):  # only this run's verdicts are read
        old.unlink()
    argv = ["nice", "-n", "19", "mvn", "-q", "-B", "-f", str(KOTLIN / "pom.xml"), "-Pstack", "test"]
    argv += [
        f"-Druntrack.endpoint={stack.envoy_tls_address}",
        f"-Druntrack.ca={stack.tls_ca}",
        f"-Druntrack.tokens={tokens}",
    ]
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    counts, failed = surefire_reports()
    verdicts = "\n".join([str(counts), *failed])
    assert done.returncode == 0, (
        f"mvn exited {done.returncode}\n{verdicts}\n--- the end of its output:\n{done.stdout[-3000:]}"
    )
    assert counts == {
        name: {"tests": n, "failures": 0, "errors": 0, "skipped": 0} for name, n in STACK_TESTS.items()
    }, verdicts
