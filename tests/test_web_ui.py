"""The web UI in real headless Chromium against real daemons: log in through the one-time URL,
see a folder and a connected peer, add a device and accept a pending folder through the UI,
watch progress while a large file syncs, and a phone-width screenshot (SYNCER_SCREENSHOTS=1 writes docs/screenshots/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import chromium, needs_browser
from tests.daemons import cluster, pair_all, wait_until
from tests.syncfix import share, wait_same

pytestmark = [needs_browser, pytest.mark.e2e, pytest.mark.slow]

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"


def _by(sel: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return By.CSS_SELECTOR, sel


# through JavaScript: the page re-renders cards on every event, so element handles go stale
def text(d, sel: str) -> str:  # type: ignore[no-untyped-def]
    return d.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", sel)


def click(d, sel: str) -> None:  # type: ignore[no-untyped-def]
    js = "const e = document.querySelector(arguments[0]); if (!e || !e.offsetParent) return false; e.click(); return true"
    wait_until(lambda: d.execute_script(js, sel), 20, f"{sel} shown and clicked")


def fill(d, sel: str, value: str) -> None:  # type: ignore[no-untyped-def]
    el = d.find_element(*_by(sel))
    el.clear()
    el.send_keys(value)


def login(d, node) -> None:  # type: ignore[no-untyped-def]
    d.get(node.syncer("gui", check=True).stdout.strip())
    wait_until(lambda: text(d, "#live") == "live", 20, "UI logged in and live")


def shot(d, name: str) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("SYNCER_SCREENSHOTS") == "1":  # opt-in: refreshes the committed docs images
        SHOTS.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(SHOTS / name))


def test_ui_end_to_end(tmp_path: Path) -> None:
    with cluster(tmp_path, "laptop", "phone", "desk") as (a, b, c):
        a.start()
        b.start()
        c.start()
        # phone downloads slowly, so the large file's progress can be watched
        b.syncer("config", "set", "limits.max_recv_kbps", "6144", check=True)
        pair_all([a, b])
        share(a, tmp_path / "a-photos", "photos")
        (tmp_path / "a-photos" / "hello.txt").write_text("hello")
        a.syncer("scan", check=True)
        share(b, tmp_path / "b-photos", "photos")
        wait_until(lambda: a.connected_to(b), 30, "laptop and phone connected")
        wait_same(tmp_path / "a-photos", tmp_path / "b-photos", 60)

        with chromium(tmp_path / "profile-a") as d:
            # log in through the one-time URL; see the folder and the connected peer
            login(d, a)
            wait_until(lambda: "photos" in text(d, '#folders [data-folder="photos"]'), 20, "folder card")
            dev = f'#devices [data-device="{b.device_id}"]'
            wait_until(lambda: "connected" in text(d, f"{dev} .conn") and "tcp" in text(d, f"{dev} .transport"), 20, "peer shown connected")
            assert "100%" in text(d, '[data-folder="photos"] .completion')
            assert a.device_id in text(d, "#my-id")
            shot(d, "overview.png")

            # the peer goes away and comes back: the page follows without a reload
            b.stop()
            wait_until(lambda: "disconnected" in text(d, f"{dev} .conn"), 30, "peer shown disconnected")
            b.start()
            wait_until(lambda: "connected" == text(d, f"{dev} .conn"), 30, "peer shown connected again")

        # desk: add the laptop through desk's UI, then accept the folder the laptop offers
        a.syncer("pair", c.device_id, "--address", c.listen_url(), "--name", "desk", check=True)
        a.syncer("share", str(tmp_path / "a-photos"), "--id", "photos", "--with", b.device_id, "--with", c.device_id, check=True)
        with chromium(tmp_path / "profile-c") as d:
            login(d, c)
            # the laptop tried to connect: desk lists it as pending
            wait_until(lambda: d.find_elements(*_by(f'[data-pending-device="{a.device_id}"]')), 30, "pending device shown")
            click(d, "#add-device-open")
            fill(d, "#add-device [name=device_id]", a.device_id)
            fill(d, "#add-device [name=name]", "laptop")
            fill(d, "#add-device [name=addresses]", a.listen_url())
            click(d, "#add-device button[type=submit]")
            wait_until(lambda: "laptop" in text(d, f'#devices [data-device="{a.device_id}"]'), 20, "device added")
            wait_until(lambda: "connected" == text(d, f'#devices [data-device="{a.device_id}"] .conn'), 30, "laptop connected to desk")
            wait_until(lambda: d.find_elements(*_by('[data-pending-folder="photos"]')), 30, "pending folder shown")
            click(d, '[data-pending-folder="photos"] .accept')
            fill(d, "#add-folder [name=path]", str(tmp_path / "c-photos"))
            click(d, "#add-folder button[type=submit]")
            wait_until(lambda: d.find_elements(*_by('#folders [data-folder="photos"]')), 30, "accepted folder shown")
            wait_same(tmp_path / "a-photos", tmp_path / "c-photos", 60, "desk received the folder")
            wait_until(lambda: "100%" in text(d, '[data-folder="photos"] .completion'), 30, "desk complete")
            assert not d.find_elements(*_by('[data-pending-folder="photos"]'))

        # phone: watch a large file arrive
        with chromium(tmp_path / "profile-b") as d:
            login(d, b)
            click(d, '[data-folder="photos"] .toggle')
            big = tmp_path / "a-photos" / "video.bin"
            with open(big, "wb") as f:
                f.write(os.urandom(24 << 20))
            a.syncer("scan", "photos", check=True)
            seen: set[str] = set()

            def progressed() -> bool:
                v = text(d, '[data-folder="photos"] .completion')
                if v:
                    seen.add(v)
                return any(s not in ("100%", "") for s in seen) and v == "100%"

            wait_until(progressed, 60, "completion to move and reach 100%")
            partial = sorted(s for s in seen if s != "100%")
            assert len(partial) >= 2, seen  # it moved while the file was arriving
            wait_same(tmp_path / "a-photos", tmp_path / "b-photos", 30)
            d.set_window_size(390, 1600)
            wait_until(lambda: d.execute_script("return document.documentElement.scrollWidth") <= 390, 10, "no horizontal scroll at phone width")
            shot(d, "phone.png")
