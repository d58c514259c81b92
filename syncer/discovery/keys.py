"""Discovery keys: 20 bytes, so they are valid BitTorrent info-hashes and DHT ids. A device's key
derives from its device ID, so `syncer pair DEVICE-ID` is all it takes to look it up."""

from __future__ import annotations

import hashlib

from syncer.deviceid import DeviceId


def device_key(device: DeviceId) -> bytes:
    return hashlib.sha1(b"syncer-device:" + device.raw).digest()
