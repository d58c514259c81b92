"""What every long-running part of the daemon shares: the clock it reads and the supervisor that
keeps its background tasks alive."""
