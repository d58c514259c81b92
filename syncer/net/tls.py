"""TLS 1.3 contexts with mutual authentication, and the peer's device ID.

Both sides present a certificate issued by the shared syncer device CA (see identity.py and
docs/security.md). OpenSSL verifies the chain, which proves the peer holds the key of the
certificate it presented; *authorization* is the device-ID check the caller does afterwards with
`peer_device_id()`. Hostname checks do not apply.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from syncer.deviceid import DeviceId
from syncer.identity import Identity, ca_cert_path

ALPN = "syncer/1"


def _base(ctx: ssl.SSLContext, ident: Identity, alpn: str) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(ident.cert_file), str(ident.key_file))
    ctx.load_verify_locations(cafile=str(ca_cert_path()))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([alpn])
    return ctx


# Contexts made so far, by side and identity files (as they were on disk): every dial made one
# of each before, and loading the key, certificate and CA took 2.4 ms, more than the whole
# handshake's CPU on both sides (2.3 ms); a swarm of eight daemons dials 56 times at its start.
# An SSLContext serves any number of connections; the ones handed out are shared, so nobody
# changes them (ALPN is part of the key).
_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
MAX_CONTEXTS = 16  # identities of one process: one, but tests run many


def _cached(side: str, ident: Identity, alpn: str, make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    try:
        cert, key = ident.cert_file.stat(), ident.key_file.stat()
    except OSError:
        return make()  # load_cert_chain gives the clear error
    k = (side, alpn, str(ident.cert_file), str(ident.key_file),
         cert.st_ino, cert.st_mtime_ns, key.st_ino, key.st_mtime_ns)
    ctx = _contexts.get(k)
    if ctx is None:
        ctx = make()
        if len(_contexts) >= MAX_CONTEXTS:
            _contexts.pop(next(iter(_contexts)))
        _contexts[k] = ctx
    return ctx


def server_context(ident: Identity, alpn: str = ALPN) -> ssl.SSLContext:
    return _cached("server", ident, alpn, lambda: _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ident, alpn))


def client_context(ident: Identity, alpn: str = ALPN) -> ssl.SSLContext:
    def make() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        return _base(ctx, ident, alpn)

    return _cached("client", ident, alpn, make)


def peer_device_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> DeviceId:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("peer presented no certificate")
    return DeviceId.from_cert_der(der)
