"""An aiohttp application served on 127.0.0.1, on a free port, by an event loop in a daemon thread: the one way the
tests' pretend servers (http_test_server, hosted_api_stand_in, score_drift_stand_in) run beside the code under test.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable

from aiohttp import web

START_SECONDS = 10  # how long start() and stop() wait for the loop


class ThreadedApp:
    """``make_app`` (a coroutine function, run on the server's loop so it may open sessions there) builds the
    application; its ``on_cleanup`` hooks run at stop(). ``url`` is set once start() returns."""

    def __init__(self, make_app: Callable[[], Awaitable[web.Application]], name: str) -> None:
        self.make_app, self.name = make_app, name
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._ready = threading.Event()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def up() -> None:
            self._runner = web.AppRunner(await self.make_app())
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

        self._loop.run_until_complete(up())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> str:
        """Serve; return the base URL. RuntimeError if the server is not up within START_SECONDS."""
        self._thread.start()
        if not self._ready.wait(START_SECONDS):
            raise RuntimeError(f"the {self.name} did not start within {START_SECONDS} s")
        return self.url

    def stop(self) -> None:
        """Close the application (its on_cleanup hooks) and end the loop and its thread, each within START_SECONDS."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(START_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_SECONDS)
