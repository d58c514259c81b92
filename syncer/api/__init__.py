"""Local control API: an aiohttp app embedded in the daemon's loop, and the CLI's client."""
