"""The four event types of the contract, built and checked before anything is sent.

A builder (`message`, `typing`, `read_receipt`, `notification`) takes the contract's
fields as keyword arguments, extra fields included, and returns an `Event`; a field that is
missing or of the wrong type raises `InvalidEvent` naming it (`data.sender_id: missing
field`), as the server's publish endpoint would answer 400. `Event.parse` checks a dict
that came from elsewhere the same way.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

# What each type's data must hold and may hold, by JSON type: the contract's table of
# events. Other fields pass through unchecked, as the server lets producers add their own.
_INTEGER, _STRING, _BOOLEAN = "an integer", "a string", "a boolean"
_FIELDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "message": (
        {"id": _INTEGER, "sender_id": _INTEGER, "message": _STRING},
        {
            "sender_name": _STRING,
            "receiver_id": _INTEGER,
            "attachment": _STRING,
            "attachment_type": _STRING,
            "timestamp": _STRING,
            "is_read": _BOOLEAN,
            "conversation_id": _INTEGER,
        },
    ),
    "typing": ({"sender_id": _INTEGER, "is_typing": _BOOLEAN}, {"sender_name": _STRING}),
    "read_receipt": (
        {"message_id": _INTEGER, "reader_id": _INTEGER},
        {"reader_name": _STRING, "read_at": _STRING},
    ),
    "notification": (
        {"title": _STRING, "message": _STRING},
        {"notification_type": _STRING, "timestamp": _STRING},
    ),
}

#: How long a typing indicator may wait in a queue, in milliseconds: one delivered late
#: is wrong (the contract's `expiration` for `typing`).
TYPING_EXPIRATION_MS = 10_000

_I64 = (-(2**63), 2**63 - 1)
_MAX_ID_LENGTH = 255


class InvalidEvent(ValueError):
    """An event the server would refuse; `field` names what is wrong (`data.sender_id`)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """One event: its type, its data, the id clients de-duplicate by (a retry with the
    same `Event` is one event to them), and its publish time in epoch seconds."""

    event: str
    data: Mapping[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        _check_id(self.id)
        _check_data(self.event, self.data)

    @classmethod
    def parse(cls, body: Mapping[str, Any], event_id: Optional[str] = None) -> Event:
        """`{"event": ..., "data": {...}}` (the contract's body), checked."""
        kind = body.get("event")
        if not isinstance(kind, str):
            raise InvalidEvent("event", "missing field" if kind is None else "expected a string")
        data = body.get("data")
        if not isinstance(data, Mapping):
            raise InvalidEvent("data", "missing field" if data is None else "expected an object")
        if event_id is None:
            return cls(kind, dict(data))
        return cls(kind, dict(data), id=event_id)

    def body(self) -> bytes:
        """The message body producers send: UTF-8 JSON of the type and data."""
        return json.dumps({"event": self.event, "data": self.data}).encode("utf-8")

    @property
    def expiration_ms(self) -> Optional[int]:
        return TYPING_EXPIRATION_MS if self.event == "typing" else None


def _check_id(event_id: object) -> None:
    valid = (
        isinstance(event_id, str)
        and 1 <= len(event_id) <= _MAX_ID_LENGTH
        and all("!" <= character <= "~" for character in event_id)
    )
    if not valid:
        raise InvalidEvent("id", "1-255 printable ASCII characters, no spaces")


def _check_data(kind: str, data: Mapping[str, Any]) -> None:
    if kind not in _FIELDS:
        known = ", ".join(_FIELDS)
        raise InvalidEvent("event", f"unknown variant `{kind}`, expected one of {known}")
    required, optional = _FIELDS[kind]
    for name, expected in required.items():
        if name not in data:
            raise InvalidEvent(f"data.{name}", "missing field")
        _check_type(name, data[name], expected)
    for name, expected in optional.items():
        # An optional field may be absent or null.
        if data.get(name) is not None:
            _check_type(name, data[name], expected)
    try:
        json.dumps(data)
    except (TypeError, ValueError) as error:
        raise InvalidEvent("data", f"not JSON: {error}") from None


def _check_type(name: str, value: object, expected: str) -> None:
    if expected == _INTEGER:
        # bool is an int in Python, never in JSON.
        fits = isinstance(value, int) and not isinstance(value, bool)
        if fits and not _I64[0] <= value <= _I64[1]:  # type: ignore[operator]
            raise InvalidEvent(f"data.{name}", "out of range for a 64-bit integer")
    elif expected == _STRING:
        fits = isinstance(value, str)
    else:
        fits = isinstance(value, bool)
    if not fits:
        raise InvalidEvent(f"data.{name}", f"expected {expected}")


def message(
    *,
    id: int,
    sender_id: int,
    message: str,
    event_id: Optional[str] = None,
    **optional: Any,
) -> Event:
    """A chat message: `message(id=1, sender_id=456, message="Hello!", receiver_id=789)`."""
    return _build(
        "message", {"id": id, "sender_id": sender_id, "message": message}, event_id, optional
    )


def typing(
    *, sender_id: int, is_typing: bool, event_id: Optional[str] = None, **optional: Any
) -> Event:
    """A typing indicator; it expires after 10 s in a queue."""
    return _build("typing", {"sender_id": sender_id, "is_typing": is_typing}, event_id, optional)


def read_receipt(
    *, message_id: int, reader_id: int, event_id: Optional[str] = None, **optional: Any
) -> Event:
    """A read receipt for message `message_id`."""
    return _build(
        "read_receipt", {"message_id": message_id, "reader_id": reader_id}, event_id, optional
    )


def notification(
    *, title: str, message: str, event_id: Optional[str] = None, **optional: Any
) -> Event:
    """A notice, for one user or a whole college."""
    return _build("notification", {"title": title, "message": message}, event_id, optional)


def _build(
    kind: str, required: dict[str, Any], event_id: Optional[str], optional: dict[str, Any]
) -> Event:
    data = {**optional, **required}
    if event_id is None:
        return Event(kind, data)
    return Event(kind, data, id=event_id)
