"""The phone library's own tests (clients/kotlin: JUnit 5 under Maven Surefire, no server): the SQLite
queue, the backoff, the overview against the server's analysis of the same trails, the recorder with no
server to reach. Maven's verdict and Surefire's counts are asserted here, so a failing or skipped
Kotlin test fails this one."""

import subprocess
import xml.etree.ElementTree as ET

from devstack.paths import ROOT

KOTLIN = ROOT / "clients" / "kotlin"


def test_the_kotlin_library_builds_and_its_junit_tests_pass():
    done = subprocess.run(
        ["mvn", "-q", "-B", "-f", str(KOTLIN / "pom.xml"), "verify"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:]
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for report in (KOTLIN / "target" / "surefire-reports").glob("TEST-*.xml"):
        suite = ET.parse(report).getroot()
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
    assert totals["tests"] >= 30 and totals["failures"] == totals["errors"] == totals["skipped"] == 0, totals
    assert list((KOTLIN / "target").glob("runtrack-client-*.jar"))
