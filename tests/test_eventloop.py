"""The daemon's event loop: uvloop where installed, asyncio's on request; both sync alike."""

from __future__ import annotations

import asyncio
import os

import pytest
import uvloop

from syncer.errors import ConfigError
from syncer.runtime import eventloop
from tests.daemons import cluster, pair_all
from tests.syncfix import share, wait_same

FID = "loops-1"


def test_uvloop_by_default_asyncio_on_request(monkeypatch):
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.loop_factory() == ("uvloop", uvloop.new_event_loop)
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.loop_factory() == ("asyncio", asyncio.new_event_loop)
    monkeypatch.setenv(eventloop.ENV, " UVLOOP ")
    assert eventloop.loop_factory()[0] == "uvloop"


def test_bad_choice_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(ConfigError, match="must be 'uvloop' or 'asyncio'"):
        eventloop.loop_factory()


@pytest.mark.e2e
def test_daemons_on_either_loop_sync_with_each_other(tmp_path):
    with cluster(tmp_path, "uv", "aio") as (uv, aio):
        du, da = tmp_path / "U", tmp_path / "A"
        (du / "sub").mkdir(parents=True)
        (du / "sub" / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 3))  # several blocks
        for i in range(50):
            (du / f"small{i}.txt").write_bytes(os.urandom(100 + i))
        da.mkdir()
        (da / "from-asyncio.bin").write_bytes(os.urandom(300_000))
        share(uv, du, FID)
        share(aio, da, FID)
        uv.start()
        aio.start(extra_env={eventloop.ENV: "asyncio"})
        pair_all([uv, aio])
        t = wait_same(du, da, what="sync both ways between a uvloop and an asyncio daemon")
        assert {"sub/big.bin", "small49.txt", "from-asyncio.bin"} <= set(t)
        assert "event loop: uvloop" in uv.log_text()
        assert "event loop: asyncio" in aio.log_text()
