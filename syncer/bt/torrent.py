"""One torrent at run time: its peers, what to request from whom, what to upload to whom, its
pieces on disk, and its announces. Used both to download (`syncer get`) and to seed (a
publication in the daemon, or `get --seed`).

Phases: `metadata` (a magnet: the info dictionary is fetched over BEP 9), `checking` (resume:
the journal's pieces and files already present are re-hashed), `downloading`, then `seeding`
(or `done`, when not seeding). Policy lives in the pure parts: `PiecePicker` (which blocks),
`Choker` (whom we upload to), `MetadataFetcher`, `PeerConnection` (protocol rules). This module
routes their decisions to connections and to the disk thread.

Defences against a peer: everything it sends is bounded by the wire machine; a block is kept only
if we asked that peer for it; each piece is held in memory (at most `max_partial` of them) until
its SHA-1 matches, so bad data never reaches the files. When a piece fails its check and one peer
sent all of it, that peer is banned (its address is never dialled again) and dropped; when
several did, the hash of each block and its sender are kept ("smart ban", as libtorrent does) and
once the piece passes, every peer whose block differed from the good one is banned. The piece is
fetched again from the others either way. A peer that lets our requests sit for SNUB_TIMEOUT
gets them handed to others and only one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fnmatch
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncer.bt import tracker as tracker_client
from syncer.bt.bitfield import Bitfield
from syncer.bt.layout import Layout
from syncer.bt.metadata import MetadataFetcher, serve_piece
from syncer.bt.metainfo import Info, MetainfoError, parse_info
from syncer.bt.peer import PeerLink
from syncer.bt.picker import PiecePicker
from syncer.bt.resume import Journal
from syncer.bt.storage import Storage, StorageError
from syncer.bt.wire import (
    ADVERTISED_REQQ,
    BLOCK,
    METADATA_PIECE,
    AllowedFast,
    BitfieldMsg,
    Cancel,
    Choke,
    ExtendedHandshake,
    Geometry,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    MetadataData,
    MetadataReject,
    MetadataRequest,
    NotInterested,
    Piece,
    ProtocolError,
    Reject,
    Request,
    Unchoke,
)
from syncer.net.backoff import Backoff
from syncer.runtime.tasks import TaskSet
from syncer.runtime.timeouts import wait_for
from syncer.transfer.choker import Choker, ChokeStats

if TYPE_CHECKING:
    from syncer.bt.session import BtSession

log = logging.getLogger(__name__)

MAX_PEERS = 50
MAX_CANDIDATES = 1000
MAX_DIALS = 8
DIAL_TIMEOUT = 10.0
TICK = 1.0
SNUB_TIMEOUT = 30.0
MAX_SUSPECT_PIECES = 256  # failed pieces whose block hashes are kept for smart ban
MIN_DEPTH = 16
MAX_DEPTH = 500
REQUEST_QUEUE_TIME = 3.0  # seconds of a peer's rate kept requested
BUFFER_BYTES = 64 << 20  # pieces held in memory until verified
SERVE_BATCH = 16
DHT_INTERVAL = 15 * 60.0
DHT_RETRY = 1.0  # first retry after 2 s, doubling: the node may still be joining
TRACKER_RETRY = 30.0
FEW_PEERS_INTERVAL = 30.0
CANDIDATE_FAILURES = 5
STOP_ANNOUNCE_TIMEOUT = 3.0


class State(enum.Enum):
    METADATA = "metadata"
    CHECKING = "checking"
    DOWNLOADING = "downloading"
    SEEDING = "seeding"
    DONE = "done"
    STOPPED = "stopped"
    ERROR = "error"


class TorrentError(Exception):
    pass


@dataclass
class Candidate:
    source: str
    backoff: Backoff
    failures: int = 0


@dataclass(frozen=True)
class Placement:
    """Where the files are: under `root`, the top-level name `top` (None: the torrent's
    name), and for a download the selection (None: every file)."""

    root: Path
    top: str | None = None
    globs: tuple[str, ...] = ()
    indices: frozenset[int] | None = None  # BEP 53 so=
    complete: bool = False  # seeding files already in place


def select_files(info: Info, globs: tuple[str, ...], indices: frozenset[int] | None) -> set[int]:
    """File indices to download: those matching any glob (against the path inside the torrent,
    or with the torrent's name in front), else the BEP 53 indices, else all."""
    real = [i for i, f in enumerate(info.files) if not f.pad]
    if globs:
        chosen = {
            i for i in real
            if any(fnmatch.fnmatchcase(info.files[i].name, g) or fnmatch.fnmatchcase(f"{info.name}/{info.files[i].name}", g) for g in globs)
        }
        if not chosen:
            sample = ", ".join(info.files[i].name for i in real[:5])
            raise TorrentError(f"--files matched none of the torrent's files (e.g. {sample})")
        return chosen
    if indices is not None:
        chosen = {i for i in real if i in indices}
        return chosen or set(real)
    return set(real)


class Torrent:
    def __init__(
        self,
        session: BtSession,
        info_hash: bytes,
        placement: Placement,
        *,
        info: Info | None = None,
        trackers: tuple[str, ...] = (),
        peers: tuple[tuple[str, int], ...] = (),
        use_dht: bool = True,
        seed: bool = True,
        journal: Journal | None = None,
        on_metadata: Callable[[Info], None] | None = None,
    ) -> None:
        self.session = session
        self.info_hash = info_hash
        self.placement = placement
        self.info: Info | None = None
        self.trackers = tuple(t for t in trackers if tracker_client.supported(t))  # http(s) only
        self.use_dht = use_dht
        self.seed_when_done = seed
        self.journal = journal
        self.on_metadata = on_metadata
        self.state = State.METADATA
        self.error = ""
        self.links: set[PeerLink] = set()
        self.candidates: dict[tuple[str, int], Candidate] = {}
        self.connecting: set[tuple[str, int]] = set()
        self.banned: set[tuple[str, int]] = set()
        self.banned_peer_ids: set[bytes] = set()
        self.ban_log: list[dict[str, str]] = []
        self.fetcher = MetadataFetcher(info_hash)
        self.choker: Choker[PeerLink] = Choker()
        self.picker: PiecePicker | None = None
        self.storage: Storage | None = None
        self.layout: Layout | None = None
        self.geometry: Geometry | None = None
        self.servable: Bitfield | None = None
        self.selected: set[int] = set()
        self._file_left: list[int] = []
        self._buffers: dict[int, bytearray] = {}
        self._senders: dict[int, dict[int, PeerLink]] = {}  # piece -> block -> who sent it
        self._suspects: dict[int, dict[int, tuple[PeerLink, bytes]]] = {}  # piece -> block -> (sender, hash)
        self.downloaded = 0  # payload bytes received in this run (verified or not)
        self.uploaded = 0
        self.wasted = 0  # payload of pieces that failed their check
        self.resumed_pieces = 0
        self.resumed_bytes = 0
        self.wanted_bytes = 0
        self.verified_bytes = 0  # of the selected files, in verified pieces
        self.complete = asyncio.Event()
        self._tasks = TaskSet(self._task_failed)
        self._wake_trackers = asyncio.Event()
        self._announced: set[str] = set()
        for p in peers:
            self.add_peers([p], "magnet")
        if info is not None:
            self._tasks.spawn(self._setup(info))

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def disk(self) -> Executor:
        return self.session.disk

    @property
    def name(self) -> str:
        return self.info.name if self.info else self.info_hash.hex()

    def start(self) -> None:
        self._tasks.spawn(self._tick_loop())
        for url in self.trackers:
            self._tasks.spawn(self._tracker_loop(url))
        if self.use_dht:
            self._tasks.spawn(self._dht_loop())

    async def stop(self) -> None:
        if self.state not in (State.ERROR,):
            self.state = State.STOPPED
        self._tasks.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in list(self.links):
            link.close("torrent stopped")
        if self._announced and self.session.http is not None:
            # best effort, and short: an unreachable tracker must not hold up a shutdown
            await asyncio.gather(
                *(wait_for(self._announce_once(url, "stopped"), STOP_ANNOUNCE_TIMEOUT) for url in self._announced),
                return_exceptions=True,
            )
        loop = asyncio.get_running_loop()
        if self.storage is not None:
            await loop.run_in_executor(self.disk, self.storage.close)
        if self.journal is not None:
            await loop.run_in_executor(self.disk, self.journal.close)

    def _task_failed(self, exc: BaseException) -> None:
        log.error("bt %s: internal task failed", self.name, exc_info=exc)
        self._fail(f"internal error: {exc}")

    def _fail(self, reason: str) -> None:
        if self.state in (State.ERROR, State.STOPPED):
            return
        log.error("bt %s: %s", self.name, reason)
        self.state = State.ERROR
        self.error = reason
        for link in list(self.links):
            link.close("torrent stopped: " + reason)
        self.complete.set()  # wakes whoever waits for the download; it reads .error

    # --- setup once the metadata is known ------------------------------------------------
    async def _setup(self, info: Info) -> None:
        self.info = info
        if self.on_metadata is not None:
            self.on_metadata(info)
        self.geometry = Geometry(info.num_pieces, info.piece_length, info.total_length)
        self.layout = Layout.of(info)
        pl = self.placement
        top = pl.top or info.name
        try:
            if pl.complete:
                self.selected = {i for i, f in enumerate(info.files) if not f.pad}
            else:
                self.selected = select_files(info, pl.globs, pl.indices)
            paths: list[tuple[str, ...] | None] = []
            for i, f in enumerate(info.files):
                if f.pad or i not in self.selected:
                    paths.append(None)
                else:
                    paths.append((top,) if info.single_file else (top, *f.path))
            self.storage = Storage(pl.root, paths, self.layout, [f.executable for f in info.files], [f.pad for f in info.files], complete=pl.complete)
        except (TorrentError, StorageError) as e:
            self._fail(str(e))
            return
        wanted = Bitfield(info.num_pieces)
        for i in self.selected:
            wanted.update(self.layout.pieces_of_file(i))
        self.wanted_bytes = sum(info.files[i].length for i in self.selected)
        for link in list(self.links):
            self._geometry_known(link)
        self.state = State.CHECKING
        loop = asyncio.get_running_loop()
        try:
            if pl.complete:
                have = Bitfield.full(info.num_pieces)
            else:
                have = await loop.run_in_executor(self.disk, self._check, wanted)
        except (StorageError, OSError, TorrentError) as e:
            self._fail(str(e))
            return
        self.servable = Bitfield(info.num_pieces)
        for i in have:
            if self.storage.readable(i):
                self.servable.add(i)
        self._file_left = [0] * len(info.files)
        for i in self.selected:
            self._file_left[i] = sum(1 for p in self.layout.pieces_of_file(i) if p not in have)
        self.verified_bytes = sum(self._selected_bytes(p) for p in have)
        max_partial = max(4, BUFFER_BYTES // info.piece_length)
        self.picker = PiecePicker(self.geometry, have, wanted, max_partial)
        for link in list(self.links):
            self._picker_knows(link)
        if self.picker.left == 0:
            await self._finished()
        else:
            self.state = State.DOWNLOADING
            for link in list(self.links):
                self._update_interest(link)
                self._fill(link)

    def _check(self, wanted: Bitfield) -> Bitfield:
        """(Disk thread.) Which pieces we already have: the journal's, and those of files
        present under their final names, each re-hashed. A file present under its final name
        whose data differs is an error: it is someone else's, we do not overwrite it."""
        info, storage, layout = self.info, self.storage, self.layout
        assert info is not None and storage is not None and layout is not None
        have = Bitfield(info.num_pieces)
        claimed = self.journal.load(info.num_pieces) if self.journal else set()
        present: list[bool] = [False] * len(info.files)
        for i in self.selected:
            f = info.files[i]
            size = storage.exists(i, final=True)
            if size is not None:
                if size != f.length:
                    raise TorrentError(f"{'/'.join(storage.paths[i] or ())} exists with another size; move it away or choose another --to")
                storage.use_final(i, True)
                claimed.update(layout.pieces_of_file(i))
            present[i] = size is not None or storage.exists(i, final=False) is not None
        for p in sorted(claimed):
            spans = layout.spans(p)
            if not all(storage.paths[s.file] is not None and present[s.file] or storage.pads[s.file] for s in spans):
                continue  # holds bytes of a file we do not keep: fetched again
            try:
                data = storage.read(p)
            except (StorageError, OSError):
                continue
            if hashlib.sha1(data).digest() == info.piece_hash(p):
                have.add(p)
                self.resumed_pieces += 1
                self.resumed_bytes += len(data)
            elif all(storage.final[s.file] or storage.pads[s.file] for s in spans):
                # only files present under their final names hold this piece, and it is wrong
                bad = next(s.file for s in spans if not storage.pads[s.file])
                raise TorrentError(f"{'/'.join(storage.paths[bad] or ())} exists and differs from the torrent's file; move it away or choose another --to")
        for i in self.selected:
            if info.files[i].length == 0:
                storage.create_empty(i)
            elif not storage.final[i] and all(p in have for p in layout.pieces_of_file(i)):
                storage.finish_file(i)
        if self.journal is not None:
            self.journal.open(set(have))
        return have

    def _selected_bytes(self, piece: int) -> int:
        assert self.layout is not None
        return sum(s.length for s in self.layout.spans(piece) if s.file in self.selected)

    def _geometry_known(self, link: PeerLink) -> None:
        """The metadata arrived: what the peer told us before is checked and kept."""
        assert self.geometry is not None
        if link.conn.geometry is not None and link.conn.early_bitfield is None and link.conn.early_haves() == []:
            return  # connected after the metadata: its messages were handled as they came
        for ev in link.conn.set_geometry(self.geometry):
            if isinstance(ev, ProtocolError):
                link.close(ev.reason)
                return
        if not link.seed:
            n = self.geometry.num_pieces
            bits = Bitfield(n, link.conn.early_bitfield) if link.conn.early_bitfield is not None else Bitfield(n)
            bits.update(link.conn.early_haves())
            link.bits, link.seed = (None, True) if bits.complete else (bits, False)
        link.conn.forget_early()

    def _picker_knows(self, link: PeerLink) -> None:
        """The picker exists (checking done): tell it about the peer, and the peer about us."""
        assert self.picker is not None and self.geometry is not None
        self.picker.add_peer(link, None if link.seed else (link.bits or Bitfield(self.geometry.num_pieces)))
        if link.conn.peer_handshake is not None and self.servable is not None and self.servable.count:
            if self.servable.complete and link.conn.fast:
                link.send(HaveAll())
            else:
                link.send(*[Have(i) for i in self.servable])

    async def _finished(self) -> None:
        """Every wanted piece is verified and every selected file in place."""
        if self.state not in (State.DOWNLOADING, State.CHECKING):
            return
        self.state = State.SEEDING if self.seed_when_done else State.DONE
        if self.journal is not None and not self.placement.complete:
            await asyncio.get_running_loop().run_in_executor(self.disk, self.journal.remove)
        self.complete.set()
        self._wake_trackers.set()  # "completed"
        for link in list(self.links):
            self._update_interest(link)
            if link.seed and not self.seed_when_done:
                link.close("download complete")
        log.info("bt %s: complete", self.name)

    # --- peers ---------------------------------------------------------------------------
    def add_peers(self, addrs: list[tuple[str, int]], source: str) -> None:
        for host, port in addrs:
            addr = (host, int(port))
            if not 0 < addr[1] < 65536 or addr in self.banned or addr in self.candidates:
                continue
            if self.session.is_self(addr):
                continue
            if len(self.candidates) >= MAX_CANDIDATES:
                worst = max(self.candidates, key=lambda a: self.candidates[a].failures)
                if self.candidates[worst].failures == 0:
                    return
                del self.candidates[worst]
            self.candidates[addr] = Candidate(source, Backoff(initial=2.0, maximum=300.0))

    def accept(self, link: PeerLink) -> bool:
        """An inbound connection asks for this torrent."""
        if self.state in (State.STOPPED, State.ERROR) or len(self.links) >= MAX_PEERS or link.address in self.banned:
            return False
        self.links.add(link)
        return True

    def _connect_more(self, now: float) -> None:
        if self.state in (State.STOPPED, State.ERROR, State.DONE):
            return
        connected = {link.address for link in self.links}
        budget = min(MAX_DIALS - len(self.connecting), MAX_PEERS - len(self.links))
        for addr, cand in list(self.candidates.items()):
            if budget <= 0:
                return
            if addr in connected or addr in self.connecting or not cand.backoff.due(now):
                continue
            self.connecting.add(addr)
            budget -= 1
            self._tasks.spawn(self._dial(addr, cand))

    async def _dial(self, addr: tuple[str, int], cand: Candidate) -> None:
        loop = asyncio.get_running_loop()
        link: PeerLink | None = None

        def factory() -> PeerLink:
            nonlocal link
            link = PeerLink(self.session, self, addr, self.session.peer_id, self.info_hash, outbound=True)
            if self.geometry is not None:
                link.conn.geometry = self.geometry
            self.links.add(link)
            return link

        try:
            await wait_for(loop.create_connection(factory, addr[0], addr[1]), DIAL_TIMEOUT)
        except (OSError, TimeoutError) as e:
            if link is not None:
                self.links.discard(link)
            cand.failures += 1
            cand.backoff.failed(time.monotonic())
            if cand.failures >= CANDIDATE_FAILURES:
                self.candidates.pop(addr, None)
            log.debug("bt %s: dial %s failed: %s", self.name, addr, e or type(e).__name__)
        finally:
            self.connecting.discard(addr)

    def ban(self, link: PeerLink, reason: str) -> None:
        if link.address not in self.banned:
            log.warning("bt %s: banning %s (%s): %s", self.name, link.label, link.client or "?", reason)
            self.banned.add(link.address)
            self.ban_log.append({"peer": link.label, "client": link.client, "reason": reason})
            del self.ban_log[:-20]
        if link.conn.peer_handshake is not None:
            self.banned_peer_ids.add(link.conn.peer_handshake.peer_id)
        self.candidates.pop(link.address, None)
        link.close("banned: " + reason)

    def on_lost(self, link: PeerLink) -> None:
        self.links.discard(link)
        self.fetcher.peer_gone(link)
        if self.picker is not None:
            self.picker.remove_peer(link)
            for other in list(self.links):
                self._fill(other)
        cand = self.candidates.get(link.address)
        if cand is not None and link.outbound:
            cand.backoff.failed(time.monotonic())
        log.debug("bt %s: %s gone: %s", self.name, link.label, link.close_reason)

    # --- events from a connection --------------------------------------------------------
    def on_events(self, link: PeerLink, events: list[Any]) -> None:
        for ev in events:
            if link.closed:
                return
            t = type(ev)
            if t is Piece:
                self._on_piece(link, ev)
            elif t is Request:
                self._on_request(link, ev)
            elif t is Have:
                self._on_have(link, ev.index)
            elif t is Handshake:
                self._on_handshake(link, ev)
            elif t is ProtocolError:
                log.info("bt %s: %s: %s", self.name, link.label, ev.reason)
                if ev.reason == "connected to ourselves":  # our own address, heard of somewhere
                    self.banned.add(link.address)
                    self.candidates.pop(link.address, None)
                link.close(ev.reason)
            elif t is Unchoke:
                self._fill(link)
            elif t is Choke:
                if self.picker is not None and not link.conn.fast:
                    self.picker.release_peer(link)
            elif t is Reject:
                if self.picker is not None:
                    self.picker.release(link, ev.index, ev.begin)
                    self._fill_later(link)
            elif t in (HaveAll, HaveNone, BitfieldMsg):
                self._on_bitfield(link, ev)
            elif t is AllowedFast:
                self._fill(link)
            elif t is ExtendedHandshake:
                self._on_extended_handshake(link, ev)
            elif t is MetadataRequest:
                self._on_metadata_request(link, ev.piece)
            elif t is MetadataData:
                self._on_metadata_data(link, ev)
            elif t is MetadataReject:
                self.fetcher.rejected(link, ev.piece)
                self._ask_metadata(link)
            elif t in (Interested, NotInterested):
                self._interest_changed(link)
            # Cancel: the machine dropped the request already; Suggest, Port: ignored

    def _on_handshake(self, link: PeerLink, hs: Handshake) -> None:
        if hs.peer_id in self.banned_peer_ids:
            link.close("banned peer id")
            return
        if any(o is not link and o.conn.peer_handshake is not None and o.conn.peer_handshake.peer_id == hs.peer_id for o in self.links):
            link.close("already connected to this peer")
            return
        cand = self.candidates.get(link.address)
        if cand is not None:
            cand.backoff.succeeded()
            cand.failures = 0
        msgs: list[Any] = []
        if link.conn.extensions:
            msgs.append(ExtendedHandshake(metadata_size=len(self.info.raw) if self.info else 0, listen_port=self.session.port, client=self.session.client, reqq=ADVERTISED_REQQ))
        sv = self.servable
        if sv is not None and sv.count:
            if sv.complete and link.conn.fast:
                msgs.append(HaveAll())
            else:
                msgs.append(BitfieldMsg(sv.to_bytes()))
        elif link.conn.fast:
            msgs.append(HaveNone())
        link.send(*msgs)

    def _on_bitfield(self, link: PeerLink, ev: Any) -> None:
        if isinstance(ev, HaveAll):
            link.seed, link.bits = True, None
        if self.geometry is None:
            return  # the machine keeps it (early_bitfield) until the metadata is known
        if isinstance(ev, (BitfieldMsg, HaveNone)):
            n = self.geometry.num_pieces
            bits = Bitfield(n, ev.bits) if isinstance(ev, BitfieldMsg) else Bitfield(n)
            link.bits, link.seed = (None, True) if bits.complete else (bits, False)
        if self.picker is not None:
            self.picker.add_peer(link, None if link.seed else link.bits)
            self._update_interest(link)
            self._fill(link)

    def _on_have(self, link: PeerLink, index: int) -> None:
        if self.geometry is None or link.seed:
            return  # before the metadata, the machine keeps haves
        if link.bits is None:
            link.bits = Bitfield(self.geometry.num_pieces)
        link.bits.add(index)
        if link.bits.complete:
            link.seed, link.bits = True, None
        if self.picker is None:
            return
        self.picker.peer_has(link, index)
        if not link.conn.am_interested and index in self.picker.wanted and index not in self.picker.have:
            self._update_interest(link)
            self._fill(link)

    def _update_interest(self, link: PeerLink) -> None:
        want = self.picker is not None and self.picker.interesting(link)
        if want and not link.conn.am_interested:
            link.send(Interested())
        elif not want and link.conn.am_interested:
            link.send(NotInterested())

    # --- metadata (BEP 9) ----------------------------------------------------------------
    def _on_extended_handshake(self, link: PeerLink, ev: ExtendedHandshake) -> None:
        link.client = ev.client
        if self.info is None and ev.ut_metadata and ev.metadata_size:
            self.fetcher.offered(link, ev.metadata_size)
            self._ask_metadata(link)

    def _ask_metadata(self, link: PeerLink) -> None:
        if self.info is not None or not link.conn.peer_ut_metadata:
            return
        now = time.monotonic()
        while (piece := self.fetcher.next_request(link, now)) is not None:
            link.send(MetadataRequest(piece))

    def _on_metadata_request(self, link: PeerLink, piece: int) -> None:
        if not link.conn.peer_ut_metadata:
            return
        data = serve_piece(self.info.raw, piece) if self.info else None
        limit = 4 * -(-len(self.info.raw) // METADATA_PIECE) + 8 if self.info else 0
        if data is None or link.metadata_served >= limit:
            link.send(MetadataReject(piece))
            return
        link.metadata_served += 1
        assert self.info is not None
        link.send(MetadataData(piece, len(self.info.raw), data))

    def _on_metadata_data(self, link: PeerLink, ev: MetadataData) -> None:
        if self.info is not None:
            return
        res = self.fetcher.received(link, ev.piece, ev.total_size, ev.data)
        if res is None:
            self._ask_metadata(link)
            return
        for bad in res.bad_peers:
            if isinstance(bad, PeerLink):
                self.ban(bad, "sent metadata that does not match the info-hash")
        if res.raw is None:
            for other in list(self.links):
                self._ask_metadata(other)
            return
        try:
            info = parse_info(res.raw, self.info_hash)
        except MetainfoError as e:
            self._fail(f"the torrent's metadata is invalid: {e}")
            return
        log.info("bt %s: metadata received (%d bytes) from %s", info.name, len(res.raw), link.label)
        self.info = info  # before setup runs: later extension handshakes must not refetch
        self._tasks.spawn(self._setup(info))

    # --- downloading ---------------------------------------------------------------------
    def _depth(self, link: PeerLink, now: float) -> int:
        if link.snubbed:
            return 1
        want = int(link.down.rate(now) * REQUEST_QUEUE_TIME / BLOCK)
        cap = min(MAX_DEPTH, link.conn.peer_reqq or ADVERTISED_REQQ)
        return max(min(MIN_DEPTH, cap), min(want, cap))

    def _fill(self, link: PeerLink) -> None:
        picker = self.picker
        if picker is None or link.closed or self.state is not State.DOWNLOADING or not link.conn.am_interested:
            return
        choked = link.conn.peer_choking
        if choked and not link.conn.allowed_fast:
            return
        now = time.monotonic()
        n = self._depth(link, now) - picker.requests_of(link)
        if n <= 0:
            return
        reqs = picker.pick(link, n, now, only=link.conn.allowed_fast if choked else None)
        if reqs:
            link.send(*[Request(*r) for r in reqs])

    def _fill_later(self, link: PeerLink) -> None:
        asyncio.get_running_loop().call_soon(self._fill, link)

    def _on_piece(self, link: PeerLink, ev: Piece) -> None:
        picker, info = self.picker, self.info
        if picker is None or info is None:
            return
        got = picker.received(link, ev.index, ev.begin)
        if got is None:
            return
        complete, cancels = got
        n = len(ev.data)
        now = time.monotonic()
        buf = self._buffers.get(ev.index)
        if buf is None:
            buf = self._buffers[ev.index] = bytearray(info.piece_size(ev.index))
        buf[ev.begin : ev.begin + n] = ev.data
        self._senders.setdefault(ev.index, {})[ev.begin // BLOCK] = link
        link.downloaded += n
        link.down.add(n, now)
        link.last_block = now
        link.snubbed = False
        self.downloaded += n
        for other, r in cancels:
            if isinstance(other, PeerLink):
                other.send(Cancel(*r))
        if complete:
            self._tasks.spawn(self._verify(ev.index, self._buffers.pop(ev.index)))
        # refill once a quarter of the pipeline drained: requests go out in batches, one write each
        if self.picker is not None and self.picker.requests_of(link) * 4 <= self._depth(link, now) * 3:
            self._fill(link)

    async def _verify(self, piece: int, buf: bytearray) -> None:
        loop = asyncio.get_running_loop()
        senders = self._senders.pop(piece, {})
        suspect = self._suspects.pop(piece, None)
        want_hashes = suspect is not None or len(set(senders.values())) > 1
        try:
            ok, hashes = await loop.run_in_executor(self.disk, self._check_write, piece, buf, want_hashes)
        except (StorageError, OSError) as e:
            self._fail(f"cannot write: {e}")
            return
        picker, layout, info = self.picker, self.layout, self.info
        if picker is None or layout is None or info is None or self.state is not State.DOWNLOADING:
            return
        if not ok:
            self.wasted += len(buf)
            contributors = picker.piece_failed(piece)
            log.info("bt %s: piece %d failed its hash check (from %s)", self.name, piece, ", ".join(c.label for c in contributors if isinstance(c, PeerLink)))
            if len(contributors) == 1:
                (c,) = contributors
                if isinstance(c, PeerLink):
                    self.ban(c, "sent a piece that failed the hash check")
            elif hashes is not None:
                self._suspects[piece] = {b: (link, hashes[b]) for b, link in senders.items()}
                while len(self._suspects) > MAX_SUSPECT_PIECES:
                    del self._suspects[next(iter(self._suspects))]
            for link in list(self.links):
                self._fill(link)
            return
        if suspect is not None and hashes is not None:
            for b, (link, h) in suspect.items():
                if hashes[b] != h:
                    self.ban(link, f"sent a corrupt block of piece {piece} (found once the piece passed)")
        picker.piece_passed(piece)
        self.verified_bytes += self._selected_bytes(piece)
        assert self.storage is not None and self.servable is not None
        if self.storage.readable(piece):
            self.servable.add(piece)
            for link in list(self.links):
                if not link.seed and link.conn.peer_handshake is not None:
                    link.send(Have(piece))
        finished = []
        for f in layout.files_of_piece(piece):
            if f in self.selected and self._file_left[f] > 0:
                self._file_left[f] -= 1
                if self._file_left[f] == 0:
                    finished.append(f)
        for f in finished:
            try:
                await loop.run_in_executor(self.disk, self.storage.finish_file, f)
            except OSError as e:
                self._fail(f"cannot finish {info.files[f].name}: {e}")
                return
        if picker.left == 0 and self.state is State.DOWNLOADING:
            await self._finished()

    def _check_write(self, piece: int, buf: bytearray, block_hashes: bool) -> tuple[bool, list[bytes] | None]:
        """(Disk thread.) Verify a piece; only a good one is written and journaled. With
        `block_hashes`, also the SHA-1 of each block (for smart ban)."""
        assert self.info is not None and self.storage is not None
        hashes = None
        if block_hashes:
            mv = memoryview(buf)
            hashes = [hashlib.sha1(mv[i : i + BLOCK]).digest() for i in range(0, len(buf), BLOCK)]
        if hashlib.sha1(buf).digest() != self.info.piece_hash(piece):
            return False, hashes
        self.storage.write_piece(piece, buf)
        if self.journal is not None:
            self.journal.append(piece)
        return True, hashes

    # --- uploading -----------------------------------------------------------------------
    def _on_request(self, link: PeerLink, ev: Request) -> None:
        if self.servable is None or ev.index not in self.servable:
            link.write(link.conn.ignore_request(ev.index, ev.begin, ev.length))
            return
        link.uploads.append((ev.index, ev.begin, ev.length))
        if not link.serving:
            link.serving = True
            self._tasks.spawn(self._serve(link))

    async def _serve(self, link: PeerLink) -> None:
        loop = asyncio.get_running_loop()
        try:
            while link.uploads and not link.closed:
                batch: list[tuple[int, int, int]] = []
                while link.uploads and len(batch) < SERVE_BATCH:
                    key = link.uploads.popleft()
                    if key in link.conn.peer_requests:
                        batch.append(key)
                if not batch:
                    continue
                try:
                    datas = await loop.run_in_executor(self.disk, self._read_blocks, batch)
                except (StorageError, OSError) as e:
                    self._fail(f"cannot read the published files: {e}")
                    return
                await link.writable.wait()
                now = time.monotonic()
                out = []
                for (index, begin, _length), data in zip(batch, datas, strict=True):
                    if (index, begin, len(data)) in link.conn.peer_requests:
                        out.append(Piece(index, begin, data))
                        link.uploaded += len(data)
                        self.uploaded += len(data)
                        link.up.add(len(data), now)
                if out:
                    link.send(*out)
        finally:
            link.serving = False

    def _read_blocks(self, batch: list[tuple[int, int, int]]) -> list[bytes]:
        assert self.storage is not None
        return [self.storage.read(i, b, n) for i, b, n in batch]

    # --- choking -------------------------------------------------------------------------
    def _interest_changed(self, link: PeerLink) -> None:
        unchoked = sum(1 for o in self.links if not o.conn.am_choking)
        if link.conn.peer_interested and link.conn.am_choking and unchoked < self.choker.slots:
            self._rechoke(time.monotonic())

    def _rechoke(self, now: float) -> None:
        stats = {
            link: ChokeStats(link.conn.peer_interested, link.down.rate(now), link.up.rate(now), connected_at=link.connected_at)
            for link in self.links
            if link.conn.peer_handshake is not None and link.conn.accepted and not link.closed
        }
        seeding = self.picker is None or self.picker.left == 0
        decision = self.choker.rank(stats, now, seeding=seeding)
        for link in stats:
            if link in decision.unchoked:
                if link.conn.am_choking:
                    link.send(Unchoke())
            elif not link.conn.am_choking:
                link.send(Choke())
                link.uploads.clear()

    # --- time ----------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            self._tick(time.monotonic())
            await asyncio.sleep(TICK)

    def _tick(self, now: float) -> None:
        for link in list(self.links):
            if link.transport is None:
                continue
            data, reason = link.conn.tick(now)
            if reason:
                link.close(reason)
                continue
            link.write(data)
            if self.picker is not None:
                if self.picker.requests_of(link) and now - link.last_block > SNUB_TIMEOUT:
                    link.snubbed = True
                    link.last_block = now
                    released = self.picker.release_peer(link)
                    link.send(*[Cancel(*r) for r in released])
                    for other in list(self.links):
                        self._fill(other)
                self._update_interest(link)
                self._fill(link)
            elif self.info is None:
                self._ask_metadata(link)
        if now >= self.choker.next_deadline():
            self._rechoke(now)
        self._connect_more(now)

    # --- announces -----------------------------------------------------------------------
    @property
    def left(self) -> int:
        if self.info is None:
            return 1  # unknown: anything non-zero says "not a seed"
        return max(0, self.wanted_bytes - self.verified_bytes)

    async def _announce_once(self, url: str, event: str | None) -> tracker_client.AnnounceResult:
        http = self.session.http
        assert http is not None
        return await tracker_client.announce(http, url, self.info_hash, self.session.peer_id, self.session.port, self.uploaded, self.downloaded, self.left, event)

    async def _tracker_loop(self, url: str) -> None:
        event: str | None = "started"
        retry = Backoff(initial=TRACKER_RETRY, maximum=1800.0)
        reported_complete = self.placement.complete  # a publication never downloads
        while True:
            if event is None and self.complete.is_set() and not reported_complete and not self.error:
                event = "completed"
            try:
                res = await self._announce_once(url, event)
            except tracker_client.TrackerError as e:
                log.info("bt %s: %s", self.name, e)
                retry.failed(time.monotonic())
                delay = max(1.0, retry.next_at - time.monotonic())
            else:
                self._announced.add(url)
                retry.succeeded()
                if event == "completed":
                    reported_complete = True
                event = None
                self.add_peers(res.peers, "tracker")
                delay = res.interval
                if self.state in (State.METADATA, State.DOWNLOADING) and not self.links:
                    delay = min(delay, FEW_PEERS_INTERVAL)
            self._wake_trackers.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self._wake_trackers.wait(), delay)

    async def _dht_loop(self) -> None:
        delay = DHT_RETRY
        while True:
            finder = self.session.dht()
            if finder is not None and not (self.info is not None and self.info.private):
                found = announced = 0
                try:
                    if self.state in (State.METADATA, State.DOWNLOADING, State.CHECKING):
                        peers = await finder.get_peers(self.info_hash)
                        self.add_peers(peers, "dht")
                        found = len(peers)
                    if self.session.port:
                        announced = await finder.announce(self.info_hash, self.session.port)
                except Exception as e:  # the DHT is best effort: its failures never end a torrent
                    log.info("bt %s: DHT: %s", self.name, e or type(e).__name__)
                log.debug("bt %s: DHT: %d peers found, announce taken by %d nodes", self.name, found, announced)
                downloading = self.state in (State.METADATA, State.DOWNLOADING)
                if announced or (found and not downloading):
                    delay = DHT_INTERVAL if not downloading else FEW_PEERS_INTERVAL * 2
                else:
                    delay = min(delay * 2, 60.0)
            await asyncio.sleep(delay)

    # --- observability -------------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        now = time.monotonic()
        peers = [link for link in self.links if link.conn.peer_handshake is not None and not link.closed]
        return {
            "info_hash": self.info_hash.hex(),
            "name": self.name,
            "state": self.state.value,
            "error": self.error,
            "size": self.info.total_length if self.info else 0,
            "wanted_bytes": self.wanted_bytes,
            "have_bytes": self.verified_bytes,
            "downloaded": self.downloaded,
            "uploaded": self.uploaded,
            "wasted": self.wasted,
            "resumed_pieces": self.resumed_pieces,
            "resumed_bytes": self.resumed_bytes,
            "down_rate": sum(link.down.rate(now) for link in peers),
            "up_rate": sum(link.up.rate(now) for link in peers),
            "peers": len(peers),
            "seeds": sum(1 for link in peers if link.seed),
            "candidates": len(self.candidates),
            "banned": list(self.ban_log),
            "pieces": self.info.num_pieces if self.info else 0,
            "pieces_have": self.picker.have.count if self.picker else (self.info.num_pieces if self.info and self.placement.complete else 0),
        }
