"""Invites: one-step pairing and joining a folder (docs/security.md)."""
