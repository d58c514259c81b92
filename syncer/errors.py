"""Errors a user sees: each carries one clear line, printed by the CLI without a traceback."""


class SyncerError(Exception):
    """Base class for errors that should be shown to the user as one line."""


class ConfigError(SyncerError):
    pass


class IdentityError(SyncerError):
    pass


class InvalidDeviceId(SyncerError):
    pass


class FolderError(SyncerError):
    pass


class DaemonError(SyncerError):
    pass
