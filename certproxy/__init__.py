"""certproxy: the TLS front of a self-hosted Docker registry stack.

Three layers, lower never imports higher:

- ``certproxy.certs``: the certificate store (paths, atomic writes, pairs,
  bootstrap certificates);
- ``certproxy.acme_client``: getting certificates from an ACME CA;
- ``certproxy.proxy``: the running program, its listeners and its CLI.
"""

__version__ = "0.1.0"
