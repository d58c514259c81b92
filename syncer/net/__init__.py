"""Transports: authenticated byte streams between devices (TCP, QUIC, relay; memory for tests)."""
