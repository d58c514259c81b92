"""The index: per-file metadata (the "torrent" of each file) of every device, in SQLite."""
