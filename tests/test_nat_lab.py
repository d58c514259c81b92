"""Hole punching and relay fallback through real NATs (network-namespace lab; root only).

Each test: lab up -> `syncer relay` in pub -> responder driver in h2 -> dialer driver in h1
(both `python -m tests.natlab.peer`, product code only) -> assertions on their RESULT lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from syncer.identity import Identity, load_or_create
from tests.natlab.fixtures import natlab  # noqa: F401
from tests.natlab.lab import LineReader, NatLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

PAYLOAD = 4 << 20


def _identity(tmp: Path, name: str) -> Identity:
    d = tmp / name
    d.mkdir(exist_ok=True)
    return load_or_create(d / "cert.pem", d / "key.pem")


def _driver(ident: Identity, mode: str, relay: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tests.natlab.peer", mode,
        "--cert", str(ident.cert_file), "--key", str(ident.key_file), "--relay", relay, *extra,
    ]


def _pair(
    lab: NatLab,
    tmp: Path,
    dial_args: tuple[str, ...] = (),
    respond_args: tuple[str, ...] = (),
    wait_responder: bool = True,
):
    a, b = _identity(tmp, "a"), _identity(tmp, "b")
    relay = lab.start_relay(tmp / "relay-home")
    resp = LineReader(lab.popen("h2", _driver(b, "respond", relay, *respond_args)))
    ready = resp.json("READY", 30)
    assert ready["device_id"] == str(b.device_id)
    dialer = lab.popen("h1", _driver(a, "dial", relay, "--peer", str(b.device_id), *dial_args))
    dres = LineReader(dialer).json("RESULT", 60)
    rres = resp.json("RESULT", 30) if wait_responder else {}
    return a, b, dres, rres


def test_cone_nat_punch_then_quic_with_mutual_tls(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    lab = natlab("cone")
    a, b, d, r = _pair(lab, tmp_path, ("--bytes", str(PAYLOAD)))
    assert d["punch_ok"], (d, lab.logs())
    assert d["ok"] and d["transport"] == "quic" and r["transport"] == "quic"
    # device IDs from the certificates on each side of the punched QUIC connection
    assert d["peer"] == str(b.device_id) and r["peer"] == str(a.device_id)
    # the dialer reached h2 at r2's public address (the NAT mapping), never the private one
    assert d["remote"].startswith(f"quic://{lab.addr.r2_wan}:")
    assert r["remote"].startswith(f"quic://{lab.addr.r1_wan}:")
    assert r["bytes"] == PAYLOAD and r["sha256"] == d["sha256"]
    assert d["connected_s"] < 5


@pytest.mark.parametrize("nat1", ["symmetric", "cone"])
def test_symmetric_nat_punch_fails_cleanly_and_relay_carries_data(
    natlab: Callable[..., NatLab], tmp_path: Path, nat1: str  # noqa: F811
) -> None:
    lab = natlab(nat1, "symmetric")  # a symmetric NAT on one side is enough to defeat punching
    a, b, d, r = _pair(lab, tmp_path, ("--bytes", str(PAYLOAD), "--relay-fallback", "--punch-seconds", "3"))
    assert not d["punch_ok"]
    assert "hole punching" in d["punch_error"] and "failed" in d["punch_error"]
    assert d["punch_s"] < 3 + 5  # bounded: punch duration plus rendezvous
    assert d["ok"], (d, lab.logs())
    assert d["transport"] == "relay" and r["transport"] == "relay"
    assert d["peer"] == str(b.device_id) and r["peer"] == str(a.device_id)
    assert r["bytes"] == PAYLOAD and r["sha256"] == d["sha256"]


def test_keepalives_hold_the_nat_mapping(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    # conntrack forgets idle UDP flows after 2 s here; QUIC PINGs every 0.5 s keep the path open
    lab = natlab("cone", udp_timeout=2)
    args = ("--bytes", "65536", "--rounds", "2", "--idle", "4", "--keepalive", "0.5", "--round-timeout", "10")
    _, _, d, r = _pair(lab, tmp_path, args, ("--keepalive", "0.5"))
    assert d["punch_ok"] and d["ok"], (d, lab.logs())
    assert r["rounds"] == 2


def test_without_keepalives_the_nat_mapping_expires(natlab: Callable[..., NatLab], tmp_path: Path) -> None:  # noqa: F811
    # the control experiment for the test above: same lab, keepalive longer than the idle period
    lab = natlab("cone", udp_timeout=2)
    args = ("--bytes", "65536", "--rounds", "2", "--idle", "4", "--keepalive", "15", "--round-timeout", "3")
    _, _, d, _ = _pair(lab, tmp_path, args, ("--keepalive", "15"), wait_responder=False)
    assert d["punch_ok"] and not d["ok"]
    assert d["error"].startswith("round 1: TimeoutError")
