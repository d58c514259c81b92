"""A hostile paired device for end-to-end tests: it speaks the real protocol (real TLS, real
frames) to a real daemon, but every message is hand-made by the test.

    peer = HostilePeer(tmp_path)              # its own identity; pair it on the victim first
    b.syncer("pair", peer.device_id, check=True); b.start()
    with peer.connect(b.listen_url()):
        peer.share(FID, b)                    # ClusterConfig offering the folder
        peer.send(Index(FID, [file_entry("x", b"hi", version=[(peer.short, 1)])]))
        peer.serve({"x": b"hi"})              # answer requests with these contents
        ...poll the victim...

The peer runs its own event loop in a thread, so tests stay synchronous and can poll the
victim's API meanwhile. Requests are answered from `serve()`'s contents (any name: the peer is
lying), otherwise with PieceError; everything received is kept in `received`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from syncer.deviceid import DeviceId
from syncer.identity import load_or_create
from syncer.index.version import short_id
from syncer.net.tcp import TcpTransport
from syncer.scan.blocksize import block_size_for
from syncer.wire import (
    ERR_NO_SUCH_FILE,
    ClusterConfig,
    Connection,
    DeviceSummary,
    FolderSummary,
    Hello,
    Message,
    MessageReceived,
    PieceError,
    Request,
    WireFile,
)


def file_entry(
    name: str,
    content: bytes,
    version: list[tuple[int, int]],
    *,
    sequence: int = 1,
    permissions: int = 0o644,
    mtime_ns: int = 1_700_000_000_000_000_000,
    modified_by: int | None = None,
) -> WireFile:
    """A WireFile announcing a regular file with exactly this content."""
    bs = block_size_for(len(content))
    blocks = [hashlib.sha256(content[i : i + bs]).digest() for i in range(0, len(content), bs)]
    return WireFile(name, 0, len(content), mtime_ns, permissions, bs, blocks, "", version, sequence, False,
                    modified_by if modified_by is not None else version[-1][0])


def dir_entry(name: str, version: list[tuple[int, int]], *, sequence: int = 1, permissions: int = 0o755) -> WireFile:
    return WireFile(name, 1, 0, 1_700_000_000_000_000_000, permissions, 0, [], "", version, sequence, False, version[-1][0])


def symlink_entry(name: str, target: str, version: list[tuple[int, int]], *, sequence: int = 1) -> WireFile:
    return WireFile(name, 2, 0, 1_700_000_000_000_000_000, 0o777, 0, [], target, version, sequence, False, version[-1][0])


def deleted_entry(name: str, type_: int, version: list[tuple[int, int]], *, sequence: int = 1) -> WireFile:
    return WireFile(name, type_, 0, 1_700_000_000_000_000_000, 0, 0, [], "", version, sequence, True, version[-1][0])


class HostilePeer:
    def __init__(self, tmp_path: Path, name: str = "evil") -> None:
        self.name = name
        self.identity = load_or_create(tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem")
        self.device_id = str(self.identity.device_id)
        self.short = short_id(self.identity.device_id)
        self.received: list[Message] = []
        self.requests: list[Request] = []
        self.contents: dict[str, bytes] = {}
        self.on_request: Callable[[Request], bytes | int | None] | None = None
        self.closed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"hostile-{name}", daemon=True)
        self._thread.start()
        self._conn: Connection | None = None
        self._stream: Any = None
        self._reader: asyncio.Task[None] | None = None
        self.index_id = 4242

    # --- running coroutines on the peer's loop -------------------------------------------
    def _run(self, coro: Any, timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    @contextmanager
    def connect(self, url: str) -> Iterator[HostilePeer]:
        self._run(self._connect(url))
        try:
            yield self
        finally:
            self.close()

    def knock(self, url: str) -> None:
        """Connect and say Hello as an unpaired device does, then hang up. The daemon refuses
        such a device as soon as the handshake shows who it is, so the Hello may find the
        stream already closed: that is the expected outcome, not an error."""
        try:
            self._run(self._connect(url))
        except ConnectionError:
            pass
        finally:
            self.close()

    async def _connect(self, url: str) -> None:
        self._stream = await TcpTransport(self.identity).connect(url)
        self._conn = Connection(now=time.monotonic())
        self.closed.clear()
        await self._stream.write(self._conn.send(Hello(self.name, "syncer", "0.1", ["bitfield", "choke"]), time.monotonic()))
        self._reader = asyncio.ensure_future(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._conn is not None
        try:
            while True:
                data = await self._stream.read()
                if not data:
                    break
                for ev in self._conn.receive_data(data, time.monotonic()):
                    if not isinstance(ev, MessageReceived):
                        continue
                    msg = ev.message
                    self.received.append(msg)
                    if isinstance(msg, Request):
                        self.requests.append(msg)
                        await self._answer(msg)
        finally:
            self.closed.set()

    async def _answer(self, req: Request) -> None:
        assert self._conn is not None
        result: bytes | int | None = self.on_request(req) if self.on_request else None
        if result is None:
            content = self.contents.get(req.name)
            result = content[req.offset : req.offset + req.size] if content is not None else ERR_NO_SUCH_FILE
        if isinstance(result, int):
            await self._stream.write(self._conn.send(PieceError(req.id, result), time.monotonic()))
        else:
            await self._stream.writelines(self._conn.send_piece(req.id, result, time.monotonic()))

    # --- what tests call -------------------------------------------------------------------
    def send(self, *msgs: Message) -> None:
        async def go() -> None:
            assert self._conn is not None
            await self._stream.write(b"".join(self._conn.send(m, time.monotonic()) for m in msgs))

        self._run(go())

    def send_raw(self, data: bytes) -> None:
        """Bytes straight onto the TLS stream (malformed frames)."""
        self._run(self._stream.write(data))

    def share(self, folder_id: str, victim_device_id: str, max_sequence: int = 0, label: str = "") -> None:
        """ClusterConfig: we share `folder_id` with the victim and hold nothing of its index."""
        victim = DeviceId.parse(victim_device_id).raw
        self.send(ClusterConfig([FolderSummary(folder_id, label, [
            DeviceSummary(self.identity.device_id.raw, self.index_id, max_sequence),
            DeviceSummary(victim, 0, 0),
        ])]))

    def serve(self, contents: dict[str, bytes]) -> None:
        """Answer requests for these names with (slices of) these bytes."""
        self.contents.update(contents)

    def received_of(self, kind: type[Message]) -> list[Any]:
        return [m for m in list(self.received) if isinstance(m, kind)]

    def close(self) -> None:
        async def go() -> None:
            if self._reader is not None:
                self._reader.cancel()
            if self._stream is not None:
                self._stream.abort()

        try:
            self._run(go(), timeout=10)
        finally:
            self.closed.set()

    def shutdown(self) -> None:
        self.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
