"""Publishing over AMQP with `pika`, as the contract's topology describes: persistent
messages to the `longpoll.events` topic exchange, `mandatory` set and publisher confirms
on, so each event comes back `routed` true or false.

One connection per broker per process, opened on first use and reused; a lock per broker
makes it safe to share between threads (Django under gunicorn's threads), since a pika
connection is not. A connection that broke (a broker restart, a heartbeat missed while
idle) is replaced on the next publish, with backoff, and the event is sent again with the
same id, so a client that gets it twice keeps one. A broker that cannot be reached within
`timeout` raises `BrokerUnavailable`, never hangs.

With several brokers (`urls` and `slots`, as the server's `AMQP_URLS` and `AMQP_SLOTS`),
a user's event goes to that user's broker and a college's to every broker; before first
use each broker's record of its place is checked, as the server checks it, so a stale list
raises `Refused` instead of sending events where their users do not poll.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, Union

import pika
import pika.exceptions

from .events import Event
from .placement import SHARD_RECORD_EXCHANGE, SlotTable
from .publisher import (
    Audience,
    BrokerUnavailable,
    College,
    Publisher,
    Receipt,
    Refused,
    User,
    routing_key,
)

DEFAULT_EXCHANGE = "longpoll.events"

# What a broken connection raises; anything else from pika is a refusal or a bug.
_CONNECTION_LOST = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionBlockedTimeout,
    socket.timeout,
    OSError,
)
_REFUSED_LOGIN = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.AuthenticationError,
)


class _Broker:
    """One broker's connection and confirm-mode channel, behind a lock."""

    def __init__(self, url: str, index: int, record: Optional[str], timeout: float) -> None:
        self.url = url
        self.index = index
        self.record = record
        self.timeout = timeout
        self.lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None
        self._pid = 0

    def channel(self) -> Any:
        """The open channel, connecting (and checking the broker's record) if needed.
        Called with the lock held."""
        if self._pid != os.getpid():
            # A connection inherited through fork (gunicorn --preload) belongs to the
            # parent: never touch it, open our own.
            self._connection = self._channel = None
            self._pid = os.getpid()
        if self._channel is not None and self._channel.is_open and self._connection.is_open:
            return self._channel
        self.drop()
        parameters = pika.URLParameters(self.url)
        parameters.socket_timeout = self.timeout
        parameters.stack_timeout = self.timeout
        parameters.blocked_connection_timeout = self.timeout
        parameters.connection_attempts = 1
        # Heartbeats keep an idle connection alive and find a dead one within a minute.
        parameters.heartbeat = 30
        parameters.client_properties = {
            "connection_name": f"longpoll-python {socket.gethostname()} pid {os.getpid()}"
        }
        try:
            connection = pika.BlockingConnection(parameters)
        except _REFUSED_LOGIN as error:
            raise Refused(f"broker {self.index}: the login was refused ({error!r})") from None
        if self.record is not None:
            self._check_record(connection)
        channel = connection.channel()
        channel.confirm_delivery()
        self._connection, self._channel = connection, channel
        return channel

    def _check_record(self, connection: Any) -> None:
        """Declares the broker's record as the server does: RabbitMQ keeps the first
        record and refuses (406) another, which means this list or table is stale."""
        channel = connection.channel()
        try:
            channel.exchange_declare(
                SHARD_RECORD_EXCHANGE,
                exchange_type="fanout",
                durable=True,
                arguments={"alternate-exchange": self.record},
            )
        except pika.exceptions.ChannelClosedByBroker as error:
            connection.close()
            if error.reply_code == 403:
                raise Refused(
                    f"broker {self.index}: its shard record cannot be checked: the user needs "
                    f"configure and read on {SHARD_RECORD_EXCHANGE} and write on "
                    f"{SHARD_RECORD_EXCHANGE}.* ({error.reply_text})"
                ) from None
            raise Refused(
                f"broker {self.index} records another place than this publisher's list and "
                f"table make it ({self.record}): {error.reply_text}. Use the servers' "
                "AMQP_URLS and AMQP_SLOTS."
            ) from None
        channel.close()

    def drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - it is being replaced either way
                pass


class AmqpPublisher(Publisher):
    """Publishes over AMQP to one broker (`url`) or several (`urls` in the servers'
    `AMQP_URLS` order, with their `AMQP_SLOTS` if set).

    `timeout` bounds connecting and a connection the broker blocks (its memory or disk
    alarm), in seconds; a broker that stops answering mid-publish is noticed by the
    30 s heartbeat. After a broken connection a publish is tried `retries` more times,
    waiting `backoff` seconds doubled each time (with jitter) between attempts.
    """

    def __init__(
        self,
        urls: Union[str, Sequence[str]],
        *,
        slots: Optional[str] = None,
        exchange: str = DEFAULT_EXCHANGE,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
    ) -> None:
        if isinstance(urls, str):
            urls = [url.strip() for url in urls.split(",")]
        if not urls or any(not url.startswith(("amqp://", "amqps://")) for url in urls):
            raise ValueError("expected one or more amqp:// or amqps:// URLs")
        self.table = SlotTable.from_setting(slots, len(urls))
        several = len(urls) > 1
        self._brokers = [
            _Broker(url, index, self.table.record_of(index) if several else None, timeout)
            for index, url in enumerate(urls)
        ]
        self.exchange = exchange
        self.retries = retries
        self.backoff = backoff

    def publish(self, items: Sequence[tuple[Audience, Event]]) -> list[Receipt]:
        receipts = []
        for audience, event in items:
            if isinstance(audience, User):
                broker = self._brokers[self.table.broker_of(audience.user_id)]
                routed = self._publish_on(broker, audience, event)
                receipts.append(Receipt(event.id, routed))
            else:
                receipts.append(self._publish_everywhere(audience, event))
        return receipts

    def _publish_everywhere(self, college: College, event: Event) -> Receipt:
        """A college's event on every broker: routed if any routed it; the brokers that
        were down are named, unless all were (then nothing went)."""
        routed, unreached = False, []
        for broker in self._brokers:
            try:
                routed = self._publish_on(broker, college, event) or routed
            except BrokerUnavailable:
                if len(self._brokers) == 1:
                    raise
                unreached.append(broker.index)
        if len(unreached) == len(self._brokers):
            raise BrokerUnavailable(f"no broker could be reached for {college}")
        return Receipt(event.id, routed, tuple(unreached))

    def _publish_on(self, broker: _Broker, audience: Audience, event: Event) -> bool:
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=event.id,
            timestamp=int(event.timestamp),
            expiration=None if event.expiration_ms is None else str(event.expiration_ms),
        )
        body, key = event.body(), routing_key(audience)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            with broker.lock:
                try:
                    broker.channel().basic_publish(
                        self.exchange, key, body, properties, mandatory=True
                    )
                    return True
                except pika.exceptions.UnroutableError:
                    return False
                except pika.exceptions.NackError:
                    # RabbitMQ 4 nacks a message for a queue whose node is down.
                    failure: Exception = BrokerUnavailable(
                        f"broker {broker.index} did not take the event (nack)"
                    )
                except pika.exceptions.ChannelClosedByBroker as error:
                    broker.drop()
                    raise Refused(
                        f"broker {broker.index} refused the publish to {self.exchange}: "
                        f"{error.reply_code} {error.reply_text}",
                        status=error.reply_code,
                    ) from None
                except _CONNECTION_LOST as error:
                    broker.drop()
                    failure = BrokerUnavailable(
                        f"broker {broker.index} ({_redacted(broker.url)}) is unavailable: {error!r}"
                    )
            if attempt < self.retries:
                time.sleep(delay * (0.5 + random.random()))
                delay *= 2
        raise failure

    def check(self) -> list[str]:
        """Connects to every broker (checking its record) and says what it found, one
        line per broker; raises as `publish` would."""
        lines = []
        for broker in self._brokers:
            with broker.lock:
                try:
                    channel = broker.channel()
                    channel.exchange_declare(self.exchange, passive=True)
                except pika.exceptions.ChannelClosedByBroker as error:
                    broker.drop()
                    raise Refused(
                        f"broker {broker.index}: no exchange {self.exchange} "
                        f"({error.reply_text}); the server declares it when it starts"
                    ) from None
                except _CONNECTION_LOST as error:
                    broker.drop()
                    raise BrokerUnavailable(
                        f"broker {broker.index} ({_redacted(broker.url)}) is unavailable: {error!r}"
                    ) from None
            lines.append(
                f"broker {broker.index} ({_redacted(broker.url)}): connected, exchange "
                f"{self.exchange} present"
            )
        return lines

    def close(self) -> None:
        for broker in self._brokers:
            with broker.lock:
                broker.drop()


def _redacted(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
