"""Scanning folders: walk, detect changes, hash in parallel."""

from syncer.scan.blocksize import block_size_for
from syncer.scan.scanner import Scanner, ScanResult

__all__ = ["Scanner", "ScanResult", "block_size_for"]
