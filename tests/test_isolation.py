"""The suite itself must never reach beyond the machine (scripts/test runs it in a private
network namespace when root; see the script)."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.mark.skipif(os.environ.get("SYNCER_TEST_NETNS") != "1", reason="not started by scripts/test as root")
def test_only_loopback_is_visible():
    assert [name for _, name in socket.if_nameindex()] == ["lo"]
