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


class RunSession:
    def __init__(self, headers: dict[str, str], timeout_seconds: float) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
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
        if self._session is not None:
            self._runner.run(self._session.close())
            self._session = None
        self._runner.close()


async def gather_limited(items: Iterable[T], call: Callable[[T], Awaitable[R]], limit: int) -> list[R]:
    """``call`` on every item, at most ``limit`` at once, results in item order."""
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await call(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
