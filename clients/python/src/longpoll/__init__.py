"""Publish real-time events to longpoll's users from Python: the Django side of the
long-polling server.

    from longpoll import AmqpPublisher, message

    publisher = AmqpPublisher("amqp://guest:guest@localhost:5672/%2f")
    receipt = publisher.to_user(789, message(id=1, sender_id=456, message="Hello!"))
    receipt.routed  # False: user 789 is not polling; fall back to e-mail or push

Modules, lowest first: `events` (the four types, checked) and `placement` (which broker
holds a user) depend on nothing here; `publisher` (audiences, receipts, errors) on
`events`; `tokens` (user tokens for the browser) on PyJWT alone; `amqp` and `http` (the
two transports) on `events`, `placement` and `publisher`; `aio` (asyncio) and `django`
(settings, `publish_on_commit`, `check_longpoll`, `online`) on the transports.
"""

from .amqp import AmqpPublisher
from .events import Event, InvalidEvent, message, notification, read_receipt, typing
from .http import Endpoint, HttpPublisher
from .placement import SlotTable, slot_of
from .publisher import (
    BrokerUnavailable,
    College,
    Publisher,
    PublishError,
    Receipt,
    Refused,
    User,
)
from .tokens import user_token

__version__ = "0.1.0"
#: The version of the wire contract this package speaks (the server's openapi.yaml).
CONTRACT_VERSION = "0.1.0"

__all__ = [
    "AmqpPublisher",
    "BrokerUnavailable",
    "College",
    "Endpoint",
    "Event",
    "HttpPublisher",
    "InvalidEvent",
    "PublishError",
    "Publisher",
    "Receipt",
    "Refused",
    "SlotTable",
    "User",
    "message",
    "notification",
    "read_receipt",
    "slot_of",
    "typing",
    "user_token",
]
