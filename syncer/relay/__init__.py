"""The relay + rendezvous server (`syncer relay`): its wire protocol, pure session logic and I/O."""
