"""The filesystem of a shared folder: names of syncer's own entries, and the confined layer
through which every access to a folder goes."""
