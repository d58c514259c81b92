"""Kademlia DHT compatible with BitTorrent's Mainline DHT (BEP 5)."""
