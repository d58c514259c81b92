"""The sync model: folders, global state, the need list, conflicts and applying remote changes."""
