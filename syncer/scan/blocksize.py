"""Block size rule (Syncthing's): the smallest power of two from 128 KiB to 16 MiB that keeps a
file at or under 2000 blocks."""

MIN_BLOCK = 128 << 10
MAX_BLOCK = 16 << 20
TARGET_BLOCKS = 2000


def block_size_for(size: int) -> int:
    bs = MIN_BLOCK
    while bs < MAX_BLOCK and (size + bs - 1) // bs > TARGET_BLOCKS:
        bs <<= 1
    return bs
