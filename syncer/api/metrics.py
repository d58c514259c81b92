"""`/metrics` in the Prometheus text exposition format (version 0.0.4).

Counters come from where they are kept: transfer bytes from the folders' per-peer stats (since
the daemon started, across reconnects), wire bytes from the live sessions, need from the
folders, scan durations from FolderScanned events (a summary: _sum and _count), connections
from the sessions, and the event log's own statistics."""

from __future__ import annotations

from collections import Counter
from typing import Any

from syncer import events as ev
from syncer.events import EventLog


class ScanDurations:
    """Per folder: scans finished and seconds spent (fed by FolderScanned events)."""

    def __init__(self, events: EventLog) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: dict[str, float] = {}
        events.subscribe(self._on_event)

    def _on_event(self, e: ev.Event) -> None:
        if e.type == ev.FOLDER_SCANNED:
            fid = str(e.data.get("folder"))
            self.count[fid] += 1
            self.seconds[fid] = self.seconds.get(fid, 0.0) + float(e.data.get("duration") or 0.0)


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Out:
    """Samples grouped under their family's HELP/TYPE lines, as the format requires."""

    def __init__(self) -> None:
        self.families: dict[str, list[str]] = {}

    def family(self, name: str, kind: str, help: str) -> None:
        self.families[name] = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        fam = name.removesuffix("_sum").removesuffix("_count") if name not in self.families else name
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        self.families[fam].append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")

    def text(self) -> str:
        return "\n".join(line for lines in self.families.values() for line in lines) + "\n"


def render(daemon: Any, events: EventLog, scans: ScanDurations) -> str:
    out = _Out()
    model = daemon.model
    folders = dict(model.folders) if model is not None else {}

    received: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    for f in folders.values():
        for dev, st in f.stats.items():
            received[str(dev)] += st.bytes_in
            sent[str(dev)] += st.bytes_out
    paired = [d.id for d in daemon.config.devices]
    out.family("syncer_device_bytes_received_total", "counter", "File data received from a device (verified blocks).")
    for d in paired:
        out.sample("syncer_device_bytes_received_total", received[d], device=d)
    out.family("syncer_device_bytes_sent_total", "counter", "File data sent to a device.")
    for d in paired:
        out.sample("syncer_device_bytes_sent_total", sent[d], device=d)
    out.family("syncer_device_wire_bytes_in", "gauge", "Bytes read on the device's current connection.")
    out.family("syncer_device_wire_bytes_out", "gauge", "Bytes written on the device's current connection.")
    out.family("syncer_device_connected", "gauge", "1 if the device is connected.")
    sessions = dict(daemon.sessions)
    for d in paired:
        s = next((s for dev, s in sessions.items() if str(dev) == d), None)
        out.sample("syncer_device_connected", 1 if s is not None else 0, device=d)
        if s is not None:
            out.sample("syncer_device_wire_bytes_in", s.conn.bytes_in, device=d)
            out.sample("syncer_device_wire_bytes_out", s.conn.bytes_out, device=d)

    by_transport: Counter[str] = Counter(s.info.label for s in sessions.values() if s.info is not None)
    out.family("syncer_connections", "gauge", "Connected devices by transport.")
    for t in sorted(set(by_transport) | {"tcp", "quic", "relay"}):
        out.sample("syncer_connections", by_transport[t], transport=t)

    out.family("syncer_folder_need_files", "gauge", "Items this device still needs.")
    out.family("syncer_folder_need_bytes", "gauge", "Bytes of files this device still needs.")
    out.family("syncer_folder_downloads", "gauge", "Files downloading now.")
    for fid, f in folders.items():
        need_files, need_bytes = f.totals("need")
        out.sample("syncer_folder_need_files", need_files, folder=fid)
        out.sample("syncer_folder_need_bytes", need_bytes, folder=fid)
        out.sample("syncer_folder_downloads", f.puller.statistics().downloading, folder=fid)
    out.family("syncer_folder_scan_duration_seconds", "summary", "Time spent scanning folders.")
    for fid in sorted(set(folders) | set(scans.count)):
        out.sample("syncer_folder_scan_duration_seconds_sum", scans.seconds.get(fid, 0.0), folder=fid)
        out.sample("syncer_folder_scan_duration_seconds_count", scans.count[fid], folder=fid)

    st = events.statistics()
    out.family("syncer_events_total", "counter", "Events emitted.")
    out.sample("syncer_events_total", st.emitted)
    out.family("syncer_events_dropped_total", "counter", "Events that left the ring buffer before a client asked for them.")
    out.sample("syncer_events_dropped_total", st.missed)
    out.family("syncer_events_buffered", "gauge", "Events held in the ring buffer.")
    out.sample("syncer_events_buffered", st.held)
    return out.text()
