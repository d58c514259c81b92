-- updating a file's blocks deletes its old rows by name; without this index every such
-- delete scanned all blocks of the folder (quadratic in the number of files)
CREATE INDEX blocks_by_name ON blocks (folder, name);
