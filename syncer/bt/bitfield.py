"""A set of piece indices as BEP 3 sends it: big-endian bits, piece 0 is the high bit of byte 0."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_POPCOUNT = bytes(bin(i).count("1") for i in range(256))


class Bitfield:
    __slots__ = ("size", "bits", "count")

    def __init__(self, size: int, bits: bytes | None = None) -> None:
        self.size = size
        nbytes = (size + 7) // 8
        if bits is None:
            self.bits = bytearray(nbytes)
        else:
            if len(bits) != nbytes:
                raise ValueError(f"bitfield of {len(bits)} bytes for {size} pieces")
            spare = size % 8
            if spare and bits[-1] & (0xFF >> spare):
                raise ValueError("bitfield has spare bits set")
            self.bits = bytearray(bits)
        self.count = sum(self.bits.translate(_POPCOUNT)) if bits is not None else 0

    @classmethod
    def full(cls, size: int) -> Bitfield:
        b = cls(size)
        b.bits[:] = b"\xff" * len(b.bits)
        if size % 8:
            b.bits[-1] = (0xFF << (8 - size % 8)) & 0xFF
        b.count = size
        return b

    def __contains__(self, i: int) -> bool:
        return 0 <= i < self.size and bool(self.bits[i >> 3] & (0x80 >> (i & 7)))

    def add(self, i: int) -> bool:
        """Sets bit i; returns whether it was newly set."""
        mask = 0x80 >> (i & 7)
        if self.bits[i >> 3] & mask:
            return False
        self.bits[i >> 3] |= mask
        self.count += 1
        return True

    def discard(self, i: int) -> None:
        mask = 0x80 >> (i & 7)
        if self.bits[i >> 3] & mask:
            self.bits[i >> 3] &= ~mask & 0xFF
            self.count -= 1

    def update(self, indices: Iterable[int]) -> None:
        for i in indices:
            self.add(i)

    @property
    def complete(self) -> bool:
        return self.count == self.size

    def __iter__(self) -> Iterator[int]:
        for byte_i, byte in enumerate(self.bits):
            if byte:
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield byte_i * 8 + bit

    def __len__(self) -> int:
        return self.count

    def to_bytes(self) -> bytes:
        return bytes(self.bits)
