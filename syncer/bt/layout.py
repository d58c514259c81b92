"""Where a piece's bytes live: the torrent's byte stream cut into files (pure).

Files follow each other in the stream in metainfo order; a piece may span several files and a
file several pieces. Lookups bisect the files' start offsets, so they cost O(log files + spans).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from syncer.bt.metainfo import Info


@dataclass(frozen=True, slots=True)
class Span:
    file: int
    file_offset: int
    length: int
    piece_offset: int  # where the span starts within the piece (or the requested range)


class Layout:
    def __init__(self, lengths: list[int], piece_length: int) -> None:
        self.lengths = lengths
        self.piece_length = piece_length
        self.starts: list[int] = []
        pos = 0
        for n in lengths:
            self.starts.append(pos)
            pos += n
        self.total = pos
        self.num_pieces = -(-pos // piece_length)

    @classmethod
    def of(cls, info: Info) -> Layout:
        return cls([f.length for f in info.files], info.piece_length)

    def piece_size(self, piece: int) -> int:
        return min(self.piece_length, self.total - piece * self.piece_length)

    def spans(self, piece: int, begin: int = 0, length: int | None = None) -> list[Span]:
        """The file ranges holding bytes [begin, begin+length) of `piece`."""
        if length is None:
            length = self.piece_size(piece) - begin
        start = piece * self.piece_length + begin
        end = start + length
        out = []
        i = bisect.bisect_right(self.starts, start) - 1
        while i < len(self.lengths) and start < end:
            f_start, f_len = self.starts[i], self.lengths[i]
            if f_len and start < f_start + f_len:
                n = min(end, f_start + f_len) - start
                out.append(Span(i, start - f_start, n, start - piece * self.piece_length - begin))
                start += n
            i += 1
        return out

    def pieces_of_file(self, i: int) -> range:
        """The pieces overlapping file i (empty for a zero-length file)."""
        if not self.lengths[i]:
            return range(0)
        first = self.starts[i] // self.piece_length
        last = (self.starts[i] + self.lengths[i] - 1) // self.piece_length
        return range(first, last + 1)

    def files_of_piece(self, piece: int) -> list[int]:
        return [s.file for s in self.spans(piece)]
