"""The four event types as the contract shapes them, and bad events refused before
anything is sent, naming the field as the server does. No broker needed."""

from __future__ import annotations

import json
from typing import Any, Callable

import pytest

from longpoll import Event, InvalidEvent, message, notification, read_receipt, typing


def test_builders_give_the_contracts_shapes() -> None:
    chat = message(
        id=123,
        sender_id=456,
        message="Hello!",
        sender_name="John Doe",
        receiver_id=789,
        conversation_id=101,
    )
    assert json.loads(chat.body()) == {
        "event": "message",
        "data": {
            "id": 123,
            "sender_id": 456,
            "message": "Hello!",
            "sender_name": "John Doe",
            "receiver_id": 789,
            "conversation_id": 101,
        },
    }
    assert typing(sender_id=456, is_typing=True).expiration_ms == 10_000
    assert chat.expiration_ms is None
    receipt = read_receipt(message_id=123, reader_id=789, read_at="2026-01-10T10:35:00Z")
    assert receipt.data["read_at"] == "2026-01-10T10:35:00Z"
    notice = notification(title="Notice", message="Exams", notification_type="exam")
    assert notice.event == "notification"


def test_each_event_has_its_own_id_unless_given() -> None:
    first, second = (typing(sender_id=1, is_typing=True) for _ in range(2))
    assert first.id != second.id
    assert typing(sender_id=1, is_typing=False, event_id="typing-1-off").id == "typing-1-off"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Event("message", {"id": 1, "message": "hi"}), "data.sender_id"),
        (lambda: message(id="1", sender_id=2, message="hi"), "data.id"),
        (lambda: message(id=1, sender_id=2, message="hi", receiver_id="x"), "data.receiver_id"),
        (lambda: message(id=2**63, sender_id=2, message="hi"), "data.id"),
        (lambda: typing(sender_id=1, is_typing="yes"), "data.is_typing"),
        (lambda: read_receipt(message_id=True, reader_id=2), "data.message_id"),
        (lambda: notification(title=None, message="m"), "data.title"),
        (lambda: notification(title="t", message="m", event_id="has space"), "id"),
        (lambda: notification(title="t", message="m", event_id="x" * 256), "id"),
        (lambda: Event("poke", {}), "event"),
        (lambda: Event.parse({"data": {}}), "event"),
        (lambda: Event.parse({"event": "typing"}), "data"),
        (lambda: message(id=1, sender_id=2, message="hi", extra=object()), "data"),
    ],
)
def test_a_bad_event_raises_naming_the_field(build: Callable[[], Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        build()
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_optional_fields_may_be_null_and_extra_fields_pass() -> None:
    event = message(id=1, sender_id=2, message="hi", attachment=None, extra={"nested": [1]})
    assert event.data["extra"] == {"nested": [1]}
    parsed = Event.parse(
        {"event": "typing", "data": {"sender_id": 1, "is_typing": True}}, event_id="abc"
    )
    assert (parsed.id, parsed.event) == ("abc", "typing")
