"""Carry out one dial `Attempt` from policy.plan(): the I/O half of the dialer policy."""

from __future__ import annotations

import asyncio

from syncer.deviceid import DeviceId
from syncer.identity import Identity
from syncer.nat.assist import PeerAssist
from syncer.nat.policy import Attempt
from syncer.nat.rendezvous import punch_and_connect
from syncer.net.quic import QuicTransport
from syncer.net.tcp import TcpTransport
from syncer.net.transport import Stream, TransportError
from syncer.relay.client import RelayTransport


async def execute(
    attempt: Attempt,
    identity: Identity,
    device_id: DeviceId,
    relays: dict[str, RelayTransport] | None = None,
    assist: PeerAssist | None = None,
) -> Stream:
    """A stream to `device_id` along `attempt`, within attempt.timeout.

    `relays` maps relay URLs to RelayTransports already open (reused for relayed sessions).
    Raises a SyncerError (TransportError, PunchFailed) on failure. Punched and relayed streams
    are checked to come from `device_id`; for direct ones the caller compares `stream.peer`
    (an address may belong to another device by now)."""
    try:
        async with asyncio.timeout(attempt.timeout):
            if attempt.kind == "tcp":
                return await TcpTransport(identity).connect(attempt.url, attempt.timeout)
            if attempt.kind == "quic":
                return await QuicTransport(identity).connect(attempt.url, attempt.timeout)
            if attempt.kind == "punch":
                return await punch_and_connect(identity, attempt.url, device_id)
            if attempt.kind == "relay":
                relay = (relays or {}).get(attempt.url) or RelayTransport(identity, attempt.url)
                return await relay.connect(device_id, attempt.timeout)
            if attempt.kind in ("assist-punch", "assist-relay") and assist is not None:
                helper = DeviceId.parse(attempt.url.removeprefix("device://"))
                if attempt.kind == "assist-punch":
                    return await assist.punch_via(helper, device_id)
                return await assist.relay_via(helper, device_id)
    except TimeoutError:
        raise TransportError(f"{attempt.kind} attempt via {attempt.url} timed out") from None
    raise TransportError(f"unknown attempt kind {attempt.kind!r}")
