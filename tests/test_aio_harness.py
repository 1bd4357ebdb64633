"""CPython's own test_asyncio networking modules on goaio's loop: no test that
passes on asyncio's default loop may fail on goaio's (scripts/run_test_asyncio.py;
the full list of modules runs with ``python scripts/run_test_asyncio.py``)."""

import json
import os
import subprocess
import sys

import pytest

from support import REPO_ROOT, subprocess_env

SCRIPT = os.path.join(REPO_ROOT, "scripts", "run_test_asyncio.py")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The default loop's results, run once for every backend's comparison
    (they do not depend on goaio's backend)."""
    return tmp_path_factory.mktemp("harness") / "default-loop.json"


@pytest.mark.timeout(240)
def test_test_asyncio_quick_modules_no_regression(backend, tmp_path, baseline):
    report = tmp_path / "report.json"
    p = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--backend", backend.name, "--report", str(report),
         "--baseline", str(baseline), "--per-test-timeout", "60", "--module-timeout", "200"],
        env=subprocess_env(), capture_output=True, text=True, timeout=230)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["module"]: r for r in json.loads(report.read_text())}
    assert all(not r["regressions"] for r in rows.values()), rows
    # the goaio side really ran goaio's loop (and only goaio's selector loop),
    # with goaio transports, and the tests passed there
    streams = rows["test_streams"]
    assert streams["goaio"]["pass"] >= 50, streams
    assert set(streams["running_loops"]) == {"HarnessLoop"}, streams
    assert streams["goaio_transports"] >= 20, streams


@pytest.mark.timeout(900)
def test_test_asyncio_ssl_and_events_no_regression(backend, tmp_path, baseline):
    """The two large modules the quick set leaves out: test_ssl (goaio's TLS
    under asyncio's TLS tests) and test_events (the loop itself, ~740 loops)."""
    report = tmp_path / "report.json"
    p = subprocess.run(
        [sys.executable, SCRIPT, "test_ssl", "test_events", "--backend", backend.name,
         "--report", str(report), "--baseline", str(baseline), "--per-test-timeout", "90",
         "--module-timeout", "600"],
        env=subprocess_env(), capture_output=True, text=True, timeout=880)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {r["module"]: r for r in json.loads(report.read_text())}
    assert all(not r["regressions"] for r in rows.values()), rows
    events, tls = rows["test_events"], rows["test_ssl"]
    assert events["goaio"]["pass"] >= 250, events
    assert set(events["running_loops"]) == {"HarnessLoop"}, events
    assert tls["goaio"]["pass"] >= 20, tls
    assert tls["goaio_transports"] >= 100, tls
