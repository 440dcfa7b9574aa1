"""The registry UI stand-in: ``/`` is a page whose script lists the repositories
from ``/v2/_catalog``; ``/v2/...`` (GET, HEAD, DELETE) goes to the registry named by
``ENV_DOCKER_REGISTRY_HOST`` / ``ENV_DOCKER_REGISTRY_PORT`` with the request's
headers (``Authorization`` and ``Host`` included) and comes back with the
registry's status and headers (``WWW-Authenticate`` included), as the real
frontend's Apache does (``ProxyPass /v2/``, ``ProxyPreserveHost On``). With
``ENV_DOCKER_REGISTRY_USE_SSL`` set it speaks TLS to the registry without checking
its certificate, as the real frontend's ``SSLProxyEngine`` with
``SSLProxyCheckPeerName off`` and no ``SSLProxyVerify`` does."""

import http.client
import os
import signal
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REGISTRY = (os.environ.get("ENV_DOCKER_REGISTRY_HOST", "registry"),
            int(os.environ.get("ENV_DOCKER_REGISTRY_PORT", "5000")))
USE_SSL = bool(os.environ.get("ENV_DOCKER_REGISTRY_USE_SSL"))
UNCHECKED = ssl.create_default_context()
UNCHECKED.check_hostname, UNCHECKED.verify_mode = False, ssl.CERT_NONE

PAGE = b"""<!doctype html>
<html><head><title>Docker Registry Frontend</title></head>
<body>
<h1>Repositories</h1>
<ul id="repositories"></ul>
<p id="state">loading</p>
<script>
fetch("/v2/_catalog", {credentials: "same-origin"})
  .then(r => r.ok ? r.json() : Promise.reject("registry answered " + r.status))
  .then(body => {
    const list = document.getElementById("repositories");
    for (const name of body.repositories) {
      const item = document.createElement("li");
      item.textContent = name;
      list.appendChild(item);
    }
    document.getElementById("state").textContent = "loaded " + body.repositories.length;
  })
  .catch(e => { document.getElementById("state").textContent = "error: " + e; });
</script>
</body></html>
"""

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.startswith("/v2"):
            self.forward()
        elif self.path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)
        else:
            self.send_error(404)

    do_HEAD = do_GET

    def do_DELETE(self) -> None:
        if self.path.startswith("/v2"):
            self.forward()
        else:
            self.send_error(405)

    def forward(self) -> None:
        if USE_SSL:
            upstream = http.client.HTTPSConnection(*REGISTRY, timeout=30, context=UNCHECKED)
        else:
            upstream = http.client.HTTPConnection(*REGISTRY, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        try:
            upstream.request(self.command, self.path, headers=headers)
            answer = upstream.getresponse()
            body = answer.read()
        except OSError as e:
            self.send_error(502, f"registry: {e}")
            return
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in HOP | {"content-length"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# As PID 1, Python ignores SIGTERM unless it says otherwise; the real frontend's Apache
# stops on it, so `docker stop` and `docker-compose down` need not wait 10 s here.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
