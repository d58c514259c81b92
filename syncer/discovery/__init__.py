"""Finding devices: a tracker (JSON and BitTorrent HTTP), a Mainline-compatible DHT, LAN beacons."""
