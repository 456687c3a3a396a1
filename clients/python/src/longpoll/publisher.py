"""What every publisher offers, whatever carries the events (AMQP or HTTP): audiences,
per-event results, the errors a caller handles, and `to_user` / `to_users` / `to_college`
on top of one `publish` that each transport implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

from .events import Event


@dataclass(frozen=True)
class User:
    """One user's inbox: routing key `user.<id>`."""

    user_id: int


@dataclass(frozen=True)
class College:
    """Every polling member of a college, each once: routing key `college.<id>`."""

    college_id: int


Audience = Union[User, College]


@dataclass(frozen=True)
class Receipt:
    """What became of one event. `routed` is false when nobody of that audience is
    polling (fall back to e-mail or push). With several brokers, `unreached_shards` names
    the brokers a college event missed because they were down; publishing the same event
    again reaches their members, and clients de-duplicate by `id`."""

    id: str
    routed: bool
    unreached_shards: tuple[int, ...] = ()


class PublishError(Exception):
    """Nothing is known to have been published; retrying the same `Event` is safe."""


class BrokerUnavailable(PublishError):
    """The broker (or the endpoint's) could not be reached or did not confirm in time."""


class Refused(PublishError):
    """The broker or the endpoint refused the request: credentials, permissions, a bad
    event, a stale broker list. Retrying will not help until the cause is fixed."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code


def routing_key(audience: Audience) -> str:
    if isinstance(audience, User):
        return f"user.{audience.user_id}"
    return f"college.{audience.college_id}"


def _check_id(kind: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**64:
        raise ValueError(f"{kind}: expected a positive whole number, got {value!r}")


class Publisher(ABC):
    """Publishes events; a transport implements `publish`."""

    @abstractmethod
    def publish(self, items: Sequence[tuple[Audience, Event]]) -> list[Receipt]:
        """Publishes each event to its audience, in order; one receipt per event."""

    def to_user(self, user_id: int, event: Event) -> Receipt:
        _check_id("user_id", user_id)
        return self.publish([(User(user_id), event)])[0]

    def to_users(self, user_ids: Iterable[int], event: Event) -> list[Receipt]:
        """The same event (one id) to each user: one receipt per user, in order."""
        ids = list(user_ids)
        for user_id in ids:
            _check_id("user_id", user_id)
        return self.publish([(User(user_id), event) for user_id in ids])

    def to_college(self, college_id: int, event: Event) -> Receipt:
        _check_id("college_id", college_id)
        return self.publish([(College(college_id), event)])[0]

    def close(self) -> None:  # noqa: B027 - a transport with nothing to release keeps it
        """Releases connections; the publisher reconnects if used again."""
