-- What this device needs of each folder, kept up to date with the file rows by the folder's
-- worker (index received, scan, apply), in pulling order: directories and symlinks first, then
-- files smallest first, deletions last. The puller reads it in that order by key ranges, so
-- nothing per file lives in RAM.
CREATE TABLE need (
    folder TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,          -- 0 directory or symlink, 1 file to download, 2 deletion
    size INTEGER NOT NULL,
    conflict INTEGER NOT NULL,      -- our version is concurrent and loses: kept as a conflict copy
    source BLOB NOT NULL,           -- a device whose row is the global version
    holders BLOB NOT NULL,          -- every device whose row is exactly the global version (32 bytes each)
    version BLOB NOT NULL,          -- the global version vector (msgpack), to tell a new one from a retried one
    error TEXT NOT NULL DEFAULT '', -- why the last attempt failed
    failures INTEGER NOT NULL DEFAULT 0,
    retry_at REAL NOT NULL DEFAULT 0, -- wall clock: not attempted again before this
    skip INTEGER NOT NULL DEFAULT 0, -- why it is deliberately not fetched (0: it is): see model/need.py
    PRIMARY KEY (folder, name)
) WITHOUT ROWID;
CREATE INDEX need_order ON need (folder, skip, kind, size, name);
CREATE INDEX need_errors ON need (folder, name) WHERE error != '';

-- the devices the need was computed against (it is recomputed when this changes)
CREATE TABLE need_basis (
    folder TEXT PRIMARY KEY,
    devices BLOB NOT NULL
) WITHOUT ROWID;

-- running totals, so status never counts rows: 'local' = non-deleted local entries, 'need' = need rows
CREATE TABLE counts (
    folder TEXT NOT NULL,
    what TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (folder, what)
) WITHOUT ROWID;
INSERT INTO counts (folder, what, files, bytes)
    SELECT folder, 'local', COUNT(*), COALESCE(SUM(size), 0) FROM files
    WHERE device = zeroblob(32) AND deleted = 0 GROUP BY folder;

-- local rows this device keeps to itself: a receive-only folder's local changes (flags bit 1)
ALTER TABLE files ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;

-- conflict copies made here: which file, which copy, whose versions, when
CREATE TABLE conflicts (
    folder TEXT NOT NULL,
    copy TEXT NOT NULL,
    name TEXT NOT NULL,
    loser INTEGER NOT NULL,      -- short id of the device whose version became the copy
    winner INTEGER NOT NULL,     -- short id of the device whose version kept the name
    loser_version BLOB NOT NULL,
    winner_version BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (folder, copy)
) WITHOUT ROWID;

-- conflict copies in an index (counted for status without walking the folder)
CREATE INDEX files_conflicts ON files (folder, device, name) WHERE instr(name, '.sync-conflict-') > 0;
