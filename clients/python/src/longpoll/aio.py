"""The asyncio API, for ASGI apps: the same builders, results and errors, awaited.

Each call runs the blocking publisher in a worker thread (`asyncio.to_thread`), so the
event loop never waits on the broker or the endpoint. The publishers are already safe to
share between threads, and a publish is one confirm round trip, so a thread per call costs
little beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from .events import Event
from .http import HttpPublisher
from .publisher import Audience, Publisher, Receipt


class AsyncPublisher:
    """Wraps an `AmqpPublisher` or `HttpPublisher`: `await publisher.to_user(...)`."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def publish(self, items: Sequence[tuple[Audience, Event]]) -> list[Receipt]:
        return await asyncio.to_thread(self.publisher.publish, items)

    async def to_user(self, user_id: int, event: Event) -> Receipt:
        return await asyncio.to_thread(self.publisher.to_user, user_id, event)

    async def to_users(self, user_ids: Iterable[int], event: Event) -> list[Receipt]:
        return await asyncio.to_thread(self.publisher.to_users, list(user_ids), event)

    async def to_college(self, college_id: int, event: Event) -> Receipt:
        return await asyncio.to_thread(self.publisher.to_college, college_id, event)

    async def online(self, user_ids: Iterable[int], token: str) -> dict[int, bool]:
        """The online lookup; needs an `HttpPublisher`."""
        if not isinstance(self.publisher, HttpPublisher):
            raise TypeError("the online lookup is an HTTP call: wrap an HttpPublisher")
        return await asyncio.to_thread(self.publisher.online, list(user_ids), token)

    async def close(self) -> None:
        await asyncio.to_thread(self.publisher.close)
