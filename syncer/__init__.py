"""syncer: peer-to-peer folder sync with BitTorrent-style swarming."""

__version__ = "0.1.0"
