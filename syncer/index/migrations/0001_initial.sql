-- folders known to this device
CREATE TABLE folders (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL
);

-- which index of each device we hold, per folder (the local device is 32 zero bytes)
CREATE TABLE indexes (
    folder TEXT NOT NULL,
    device BLOB NOT NULL,
    index_id INTEGER NOT NULL,
    max_sequence INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (folder, device)
) WITHOUT ROWID;

-- every device's view of every file; block hashes as one concatenated blob (32 bytes each)
CREATE TABLE files (
    folder TEXT NOT NULL,
    device BLOB NOT NULL,
    name TEXT NOT NULL,
    type INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    permissions INTEGER NOT NULL,
    block_size INTEGER NOT NULL,
    blocks BLOB NOT NULL,
    symlink_target TEXT NOT NULL,
    version BLOB NOT NULL,
    sequence INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    modified_by INTEGER NOT NULL,
    inode INTEGER NOT NULL DEFAULT 0,
    dev INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (folder, device, name)
) WITHOUT ROWID;

CREATE INDEX files_by_sequence ON files (folder, device, sequence);

-- where each block of the local device's files is, to reuse identical blocks (renames, copies)
CREATE TABLE blocks (
    folder TEXT NOT NULL,
    hash BLOB NOT NULL,
    name TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (folder, hash, name, idx)
) WITHOUT ROWID;
