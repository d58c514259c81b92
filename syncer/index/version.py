"""Version vectors (pure): one counter per device that changed a file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from syncer.deviceid import DeviceId


class Ordering(Enum):
    EQUAL = "equal"
    GREATER = "greater"
    LESSER = "lesser"
    CONCURRENT = "concurrent"


def short_id(device: DeviceId) -> int:
    """First 8 bytes of the device ID, big-endian: names a device inside version vectors."""
    return int.from_bytes(device.raw[:8], "big")


class VersionVector(tuple[tuple[int, int], ...]):  # (device short id, counter) pairs, sorted by device
    __slots__ = ()

    @classmethod
    def from_list(cls, items: Iterable[Sequence[int]]) -> VersionVector:
        merged: dict[int, int] = {}
        for d, c in items:
            merged[int(d)] = max(merged.get(int(d), 0), int(c))
        return cls(tuple(sorted((d, c) for d, c in merged.items() if c > 0)))

    def to_list(self) -> list[tuple[int, int]]:
        return list(self)

    def counter(self, device: int) -> int:
        for d, c in self:
            if d == device:
                return c
        return 0

    def update(self, device: int, floor: int = 0) -> VersionVector:
        """Our counter + 1, or `floor` if higher. With the wall clock in seconds as the floor
        (as Syncthing does), a device that lost its index still makes versions newer than those
        its peers hold from before the loss, instead of restarting at 1 below them."""
        counters = dict(self)
        counters[device] = max(counters.get(device, 0) + 1, floor)
        return VersionVector(tuple(sorted(counters.items())))

    def merge(self, other: VersionVector) -> VersionVector:
        return VersionVector.from_list(list(self) + list(other))

    def compare(self, other: VersionVector) -> Ordering:
        a, b = dict(self), dict(other)
        greater = lesser = False
        for d in a.keys() | b.keys():
            x, y = a.get(d, 0), b.get(d, 0)
            if x > y:
                greater = True
            elif x < y:
                lesser = True
        if greater and lesser:
            return Ordering.CONCURRENT
        if greater:
            return Ordering.GREATER
        if lesser:
            return Ordering.LESSER
        return Ordering.EQUAL
