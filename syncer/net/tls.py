"""TLS 1.3 contexts with mutual authentication, and the peer's device ID.

Both sides present a certificate issued by the shared syncer device CA (see identity.py and
docs/security.md). OpenSSL verifies the chain, which proves the peer holds the key of the
certificate it presented; *authorization* is the device-ID check the caller does afterwards with
`peer_device_id()`. Hostname checks do not apply.
"""

from __future__ import annotations

import ssl

from syncer.deviceid import DeviceId
from syncer.identity import Identity, ca_cert_path

ALPN = "syncer/1"


def _base(ctx: ssl.SSLContext, ident: Identity) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(ident.cert_file), str(ident.key_file))
    ctx.load_verify_locations(cafile=str(ca_cert_path()))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols([ALPN])
    return ctx


def server_context(ident: Identity) -> ssl.SSLContext:
    return _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ident)


def client_context(ident: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    return _base(ctx, ident)


def peer_device_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> DeviceId:
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("peer presented no certificate")
    return DeviceId.from_cert_der(der)
