"""The data plane: HTTP/1.1 over TLS on asyncio protocols and ``httptools``.

``client`` (connections, listeners, the sweep) -> ``exchange`` (one request
and its response) -> ``upstream`` (pooled upstream connections, seen by the
exchange's ``ResponseSink`` side only); ``routes`` holds what a listener
shares, ``wire`` certproxy's own bytes, ``headers`` the header rules,
``tls`` the contexts and certificate selection, ``tlsconn`` the TLS
transport (accept, handshake, records, close), ``hello`` the ClientHello
read for TLS-ALPN-01. Imports ``certs`` and
nothing above it: the running program (``service``) hands in what it needs
as callables and small interfaces.
"""
