"""NAT traversal: the shared UDP socket (demux), rendezvous client, hole punching, dialer policy."""
