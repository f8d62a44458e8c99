"""A pretend OpenAI-compatible server on 127.0.0.1 that lists one model and answers every completion with a 200
header promising a body, then drops the connection: the fault "connection dropped after the headers".

It speaks raw HTTP/1.1 over asyncio streams, because a web framework would not send a Content-Length it then
breaks. No model is loaded.
"""
from __future__ import annotations

import asyncio
import json
import threading

MODEL = "pretend-model"
ANSWERS = {("GET", "/v1/models"): (200, json.dumps({"data": [{"id": MODEL}]})), ("GET", "/health"): (200, "{}")}


class DroppingServer:
    def __init__(self) -> None:
        self.completions = 0
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            length = next((int(line.split(":", 1)[1]) for line in head if line.lower().startswith("content-length:")), 0)
            if length:
                await reader.readexactly(length)
            if path.endswith("/v1/completions"):
                self.completions += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                             b'{"choices": [{"index": 0, "logpro')
            else:
                status, body = ANSWERS.get((method, path), (404, '{"error": {"message": "not found"}}'))
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                             f"Connection: close\r\n\r\n{body}".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> "DroppingServer":
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop).result(10)
        self._server = server
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
