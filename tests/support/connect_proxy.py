"""A CONNECT-only HTTP proxy to PyPI, for ``docker build`` inside the test engine.

The container tests run their Docker engine in a network namespace of their
own, which has no route to the internet. The image's build stage still has to
fetch wheels from PyPI, as it does on a user's machine, so the test gives the
build ``HTTPS_PROXY`` (one of Docker's predefined build arguments, which the
Dockerfile does not declare and the image does not keep) pointing here. Only
``CONNECT`` to port 443 of PyPI's hosts is allowed; everything else gets 403.

Run: ``python connect_proxy.py ADDRESS PORT`` (prints ``ready`` when listening).
"""

from __future__ import annotations

import asyncio
import sys

ALLOWED = {"pypi.org", "files.pythonhosted.org"}


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host not in ALLOWED or port != "443":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, 443), 30)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, OSError):
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main(address: str, port: int) -> None:
    server = await asyncio.start_server(handle, address, port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
