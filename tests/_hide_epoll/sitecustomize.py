"""Test-only: with GOAIO_TEST_HIDE_EPOLL=1, make this interpreter look like a
platform without epoll and eventfd (macOS, Windows...), before goaio is
imported.

tests/conftest.py runs this file for the test process and puts its folder on
PYTHONPATH, so that every child interpreter a test starts runs it too (as its
``sitecustomize``). The compiled goaio._epoll is not hidden: run only the pure
tests with the switch set (``-k pure``).
"""

import os
import select
import sys


def hide_epoll():
    for name in [n for n in dir(select) if n == "epoll" or n.startswith("EPOLL")]:
        delattr(select, name)
    for name in [n for n in dir(os) if n.startswith("eventfd") or n.startswith("EFD_")]:
        delattr(os, name)
    selectors = sys.modules.get("selectors")
    if selectors is not None:  # imported already (subprocess does): re-pick as it would
        selectors.__dict__.pop("EpollSelector", None)
        if selectors.DefaultSelector.__name__ == "EpollSelector":
            selectors.DefaultSelector = getattr(selectors, "PollSelector", selectors.SelectSelector)


if os.environ.get("GOAIO_TEST_HIDE_EPOLL") == "1":
    hide_epoll()
