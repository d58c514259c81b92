"""Serving blocks to peers: one serve task per session, never the session's read loop.

Requests are queued as they are read (at most the protocol's MAX_INCOMING_REQUESTS per peer, so
the queue is bounded); a Cancel removes a request not yet served. The serve task waits for room
in the session's outgoing queue, takes a batch of requests, resolves each on the event loop (is
the peer choked? which folder? a block of a download in progress?), reads the blocks in the
serving thread (file data and index rows: never a disk read on the event loop) and queues the
pieces. The upload rate limit delays this task only: downloads from the same peer go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncer.deviceid import DeviceId
from syncer.index.db import IndexDB
from syncer.model.storage import JobFile
from syncer.transfer.ratelimit import TokenBucket
from syncer.wire import ERR_CHOKED, ERR_NO_SUCH_BLOCK, ERR_NO_SUCH_FILE, PieceError, Request

if TYPE_CHECKING:
    from syncer.model.folder import FolderRuntime
    from syncer.peer.session import PeerSession

log = logging.getLogger(__name__)

BATCH_BYTES = 4 << 20  # served per hand-off to the serving thread
BIG_BLOCK = 4 << 20  # blocks this big are read only when the session's queue is empty


@dataclass
class _Job:
    req: Request
    folder: FolderRuntime | None
    temp: JobFile | None = None
    result: bytes | str | int = ERR_NO_SUCH_FILE


class _Queue:
    def __init__(self) -> None:
        self.requests: OrderedDict[int, Request] = OrderedDict()
        self.wake = asyncio.Event()


class BlockServer:
    def __init__(
        self,
        folder_for: Callable[[str, DeviceId], FolderRuntime | None],
        choking: Callable[[DeviceId], bool],
        db_for_thread: Callable[[], IndexDB],
        executor: Executor,
        bucket: Callable[[], TokenBucket],
        clock_now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._folder_for = folder_for
        self._choking = choking
        self._db = db_for_thread
        self._bucket = bucket
        self._now = clock_now
        self._sleep = sleep
        self._queues: dict[DeviceId, _Queue] = {}
        self.executor = executor  # the serving thread

    def request(self, dev: DeviceId, req: Request) -> None:
        q = self._queues.get(dev)
        if q is not None:
            q.requests[req.id] = req
            q.wake.set()

    def cancel(self, dev: DeviceId, rid: int) -> None:
        q = self._queues.get(dev)
        if q is not None:
            q.requests.pop(rid, None)

    def pending(self, dev: DeviceId) -> int:
        q = self._queues.get(dev)
        return len(q.requests) if q else 0

    async def serve(self, session: PeerSession) -> None:
        """Run for the session's lifetime."""
        dev = session.device
        q = self._queues[dev] = _Queue()
        try:
            while not session.closed:
                if not q.requests:
                    q.wake.clear()
                    await q.wake.wait()
                    continue
                # a big block is read only once the previous one is on its way (TLS still holds
                # a few MiB to send meanwhile): two 16 MiB blocks alive at once were the seed's peak
                await session.wait_writable(empty=next(iter(q.requests.values())).size >= BIG_BLOCK)
                batch: list[_Job] = []
                size = 0
                while q.requests and size < BATCH_BYTES:
                    _, req = q.requests.popitem(last=False)
                    batch.append(self._resolve(dev, req))
                    size += req.size
                reads = [j for j in batch if isinstance(j.result, str)]
                if reads:
                    await asyncio.get_running_loop().run_in_executor(self.executor, _read_all, reads, self._db)
                    reads.clear()
                sent = _send_batch(session, batch)
                batch.clear()  # the blocks now belong to the session's queue alone
                if sent:
                    wait = self._bucket().take(sent, self._now())
                    if wait > 0:
                        await self._sleep(wait)  # upload rate limit
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if self._queues.get(dev) is q:
                del self._queues[dev]

    def _resolve(self, dev: DeviceId, req: Request) -> _Job:
        folder = self._folder_for(req.folder, dev)
        if folder is None:
            return _Job(req, None, result=ERR_NO_SUCH_FILE)
        if self._choking(dev):
            return _Job(req, folder, result=ERR_CHOKED)
        temp = folder.temp_block(req.name, req.block_index, req.offset, req.size, req.hash)
        return _Job(req, folder, temp, result="read")


def _send_batch(session: PeerSession, batch: list[_Job]) -> int:
    """Queue the answers of a batch that was read; the bytes of block data queued."""
    dev, sent = session.device, 0
    for j in batch:
        if isinstance(j.result, int):
            session.send(PieceError(j.req.id, j.result))
            continue
        if isinstance(j.result, str):  # could not be read after all
            session.send(PieceError(j.req.id, ERR_NO_SUCH_FILE if j.result == "no-file" else ERR_NO_SUCH_BLOCK))
            if j.result == "changed" and j.folder is not None:
                j.folder.file_changed(j.req.name)
            continue
        session.send_piece(j.req.id, j.result)
        sent += len(j.result)
        if j.folder is not None:
            st = j.folder.stats.get(dev)
            if st is not None:
                st.bytes_out += len(j.result)
                st.blocks_out += 1
    return sent


def _read_all(jobs: list[_Job], db_for_thread: Callable[[], IndexDB]) -> None:
    """Serving thread: read every block of the batch (from the file, or the download's temp)."""
    db = db_for_thread()
    for j in jobs:
        r = j.req
        try:
            if j.temp is not None:
                data = j.temp.read(r.size, r.offset)
                j.result = data if data is not None and len(data) == r.size else "no-block"
                continue
            assert j.folder is not None
            j.result = j.folder.storage.read_local(db, r.name, r.block_index, r.offset, r.size, r.hash)
        except OSError as e:
            log.debug("cannot serve %s#%d: %s", r.name, r.block_index, e)
            j.result = "no-block"
