"""Helpers shared by the bench modules (a plain module: test files import it,
which they cannot safely do with conftest.py)."""

import os

import pytest

from goaio._bench import servers as srvmod


def _cpus():
    """(server CPUs, client CPUs): the server on one CPU, the client on the others."""
    if hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        return {cpus[0]}, set(cpus[1:])
    return None, None


SERVER_CPUS, CLIENT_CPUS = _cpus()


def start_server(name):
    ok, why = srvmod.availability(name)
    if not ok:
        pytest.skip(f"{name}: {why}")
    return srvmod.Server(srvmod.BY_NAME[name], cpus=SERVER_CPUS)


#: (group, line) pairs printed after the run by conftest's terminal summary:
#: the figures that pytest-benchmark's own table has no column for.
SUMMARY = []


def note(group, text):
    SUMMARY.append((group, text))
