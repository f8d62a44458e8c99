"""One aiohttp session on one event loop for the life of a run, driven from synchronous code.

A ClientSession is bound to the loop it was made on, so the route keeps a single asyncio.Runner and runs
every request coroutine on it.
"""
from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine, Iterable, Optional, TypeVar

import aiohttp

T = TypeVar("T")
R = TypeVar("R")


# Opening a connection (TCP, and the TLS handshake for https) to a server that is up takes milliseconds; one that
# can't be opened in this long never will (an https:// URL to a plain-HTTP server may leave the handshake hanging).
CONNECT_TIMEOUT_SECONDS = 15.0


class RunSession:
    def __init__(self, headers: dict[str, str], timeout_seconds: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds, connect=min(timeout_seconds, CONNECT_TIMEOUT_SECONDS))
        self._headers = headers
        self._runner = asyncio.Runner()
        self._session: Optional[aiohttp.ClientSession] = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self.timeout)
        return self._session

    def close(self) -> None:
        # Anything still in flight (a Ctrl-C mid-request) is cancelled before the session goes, so that no
        # request wakes up to a closed connection and reports it after the run has said its last word.
        self._runner.run(_cancel_others())
        if self._session is not None:
            self._runner.run(self._session.close())
            self._session = None
        self._runner.close()


def bearer_session(api_key: Optional[str], timeout_seconds: float) -> RunSession:
    """A route's session, sending ``api_key`` (if any) as its bearer token on every request: in a header, never
    in a URL or a body."""
    return RunSession({"Authorization": f"Bearer {api_key}"} if api_key else {}, timeout_seconds)


async def _cancel_others() -> None:
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def gather_limited(items: Iterable[T], call: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """``call`` on every item, at most ``limit`` at once, results in item order.

    The first failure cancels the calls still running (and waits for them to end) before it is raised, so a
    request that failed for good never leaves siblings retrying behind it.
    """
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await call(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.gather(*unfinished, return_exceptions=True)
