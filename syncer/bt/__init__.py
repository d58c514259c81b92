"""Public shares over standard BitTorrent (BEP 3/5/6/9/10/23/47/53), for strangers.

Nothing here touches a synced folder or the sync protocol: BitTorrent peers reach only what was
published, through their own listener. Pure parts (no I/O, time as an argument) are `metainfo`,
`magnet`, `bitfield`, `wire`, `metadata`, `picker` and `layout`; `storage`, `resume`, `create`,
`tracker`, `dht`, `peer`, `torrent`, `session`, `publications` and `service` do the I/O.
See docs/bittorrent.md.
"""
