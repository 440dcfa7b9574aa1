"""certproxy: the TLS front of a self-hosted Docker registry stack.

Five layers, lower never imports higher:

- ``certproxy.certs``: the certificate store (paths, atomic writes, pairs,
  bootstrap certificates, the watcher);
- ``certproxy.acme_client``: getting certificates from an ACME CA;
- ``certproxy.proxy``: the data plane (HTTP/1.1 over TLS, upstream pools,
  TLS contexts); imports ``certs`` only;
- ``certproxy.service``: the running program (configuration, wiring,
  reload, health, auth, metrics, logs);
- ``certproxy.cli``: the ``certproxy`` command, one module per command.
"""

import os

__version__ = "0.1.0"

# The compiled build of the data plane, when it is installed, unless CERTPROXY_PURE=1
# asks for the pure-Python modules it is built from (build.py).
if os.environ.get("CERTPROXY_PURE") == "1":
    from .build import prefer_sources

    prefer_sources()
