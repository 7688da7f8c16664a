#!/usr/bin/env python3
"""An SMTP server for the tests (aiosmtpd, from PyPI): takes every mail on a loopback
port of the system's choosing, printed first on stdout, and writes each one to
FOLDER/<n>.eml with its envelope's recipients first. Ends when stdin closes."""

import asyncio
import os
import sys

from aiosmtpd.smtp import SMTP


class Keep:
    def __init__(self, folder):
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.folder, f"{self.count:04}.eml")
        content = envelope.content
        if isinstance(content, str):
            content = content.encode()
        with open(path + ".part", "wb") as f:
            f.write(("X-Envelope-To: " + ",".join(envelope.rcpt_tos) + "\r\n").encode())
            f.write(content)
        os.rename(path + ".part", path)
        return "250 OK"


async def main():
    folder = sys.argv[1]
    os.makedirs(folder, exist_ok=True)
    handler = Keep(folder)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
