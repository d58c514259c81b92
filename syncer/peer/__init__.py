"""A connection with one paired device: the wire session over a transport, and which of two
connections to a device both sides keep."""
