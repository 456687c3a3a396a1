"""Publishing over AMQP against the real RabbitMQ, delivered through the server users
poll (`longpoll-local` over HTTP)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import PrivateBroker, Server, unique_id

from longpoll import AmqpPublisher, BrokerUnavailable, InvalidEvent, Refused, message, notification
from longpoll.placement import SlotTable


def held_poll(server: Server, user_id: int, **options: Any) -> dict[str, Any]:
    """Starts a poll in a thread; the returned dict gets its `events` when it answers."""
    answer: dict[str, Any] = {}

    def run() -> None:
        answer["events"] = server.poll(user_id, **options)

    answer["thread"] = threading.Thread(target=run)
    answer["thread"].start()
    time.sleep(0.5)  # the poll has declared the user's queue and is waiting
    return answer


def test_an_event_reaches_a_held_poll(server: Server, amqp_url: str) -> None:
    user = unique_id()
    server.poll(user, ack="")  # the inbox exists from the first poll on
    publisher = AmqpPublisher(amqp_url)
    poll = held_poll(server, user, ack="")
    started = time.monotonic()
    event = message(id=1, sender_id=2, message="Hello from Python")
    receipt = publisher.to_user(user, event)
    poll["thread"].join()
    assert receipt.routed and receipt.id == event.id
    assert time.monotonic() - started < 1.5, "answered on arrival, not at the hold's end"
    [delivered] = poll["events"]
    assert (delivered["id"], delivered["event"], delivered["data"]) == (
        event.id,
        "message",
        dict(event.data),
    )
    assert delivered["timestamp"] == int(event.timestamp)


def test_routed_is_false_when_nobody_has_an_inbox(amqp_url: str) -> None:
    publisher = AmqpPublisher(amqp_url)
    assert not publisher.to_user(unique_id(), message(id=1, sender_id=2, message="x")).routed
    notice = notification(title="Notice", message="Exams")
    assert publisher.to_college(unique_id(), notice).routed is False


def test_a_college_event_reaches_every_polling_member(server: Server, amqp_url: str) -> None:
    college, members = unique_id(), [unique_id(), unique_id()]
    for member in members:
        server.poll(member, college_id=college, ack="")
    receipt = AmqpPublisher(amqp_url).to_college(college, notification(title="T", message="M"))
    assert receipt.routed and receipt.unreached_shards == ()
    for member in members:
        assert [event["id"] for event in server.poll(member, college_id=college, ack="")] == [
            receipt.id
        ]


def test_a_retried_id_is_delivered_once(server: Server, amqp_url: str) -> None:
    """A retry after a lost confirm sends the same event again; the server hands both
    copies out under one id, and clients keep one (the contract's de-duplication)."""
    user = unique_id()
    server.poll(user, ack="")
    publisher = AmqpPublisher(amqp_url)
    event = message(id=7, sender_id=2, message="once")
    assert publisher.to_user(user, event).routed
    assert publisher.to_user(user, event).routed  # the retry
    events = server.poll(user, ack="")
    assert {delivered["id"] for delivered in events} == {event.id}
    assert len({(e["id"], e["event"]) for e in events}) == 1


def test_a_bad_event_raises_and_sends_nothing(server: Server, amqp_url: str) -> None:
    user = unique_id()
    server.poll(user, ack="")
    publisher = AmqpPublisher(amqp_url)
    with pytest.raises(InvalidEvent, match="data.sender_id"):
        publisher.to_user(user, message(id=1, sender_id="me", message="x"))  # type: ignore[arg-type]
    assert server.poll(user, ack="") == []


def test_threads_share_one_publisher(server: Server, amqp_url: str) -> None:
    """Django under gunicorn's threads: one publisher, eight threads, every event
    confirmed and delivered."""
    user = unique_id()
    server.poll(user, ack="")
    publisher = AmqpPublisher(amqp_url)
    events = [message(id=n, sender_id=2, message=f"m{n}") for n in range(80)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        receipts = list(pool.map(lambda event: publisher.to_user(user, event), events))
    assert all(receipt.routed for receipt in receipts)
    delivered: list[str] = []
    while len(delivered) < len(events):
        batch = server.poll(user, ack=delivered[-1] if delivered else "")
        assert batch, f"{len(delivered)} of {len(events)} delivered"
        delivered.extend(event["id"] for event in batch)
    assert sorted(delivered) == sorted(event.id for event in events)


def test_an_unreachable_broker_raises_within_the_timeout() -> None:
    from conftest import free_port

    publisher = AmqpPublisher(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f", timeout=1.0, retries=1, backoff=0.1
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="broker 0"):
        publisher.to_user(1, message(id=1, sender_id=2, message="x"))
    assert time.monotonic() - started < 5


def test_wrong_credentials_are_refused_not_retried(amqp_url: str) -> None:
    wrong = amqp_url.replace("guest:guest@", "guest:wrong@")
    with pytest.raises(Refused, match="login was refused"):
        AmqpPublisher(wrong, retries=0).to_user(1, message(id=1, sender_id=2, message="x"))


def test_a_broker_restart_mid_run_loses_nothing_confirmed(private_broker: PrivateBroker) -> None:
    server = Server(private_broker.url)
    try:
        user = unique_id()
        server.poll(user, ack="")
        publisher = AmqpPublisher(private_broker.url, timeout=2.0, retries=6, backoff=0.5)
        before = message(id=1, sender_id=2, message="before the restart")
        assert publisher.to_user(user, before).routed
        private_broker.restart()
        # The next publish finds its connection gone, reconnects and is confirmed.
        after = message(id=2, sender_id=2, message="after the restart")
        assert publisher.to_user(user, after).routed
        assert private_broker.messages_in(f"event_queue:user:{user}") == 2
        deadline, delivered = time.monotonic() + 30, []
        while not delivered and time.monotonic() < deadline:
            try:
                delivered = server.poll(user, ack="")
            except OSError:
                time.sleep(0.5)  # the server reconnecting answers 503 for a moment
        assert [event["id"] for event in delivered] == [before.id, after.id]
    finally:
        server.stop()


def test_several_brokers_place_users_as_the_server_does() -> None:
    """Two private brokers as shards, the server claiming their records first: the
    package checks the same records (same table, same fingerprint), puts each user's
    event on that user's broker, and refuses a reordered list."""
    brokers = [PrivateBroker(), PrivateBroker()]
    urls = ",".join(broker.url for broker in brokers)
    server = Server(urls, several=True)
    try:
        table = SlotTable.even(2)
        users: dict[int, int] = {}
        while len(users) < 2:
            user = unique_id()
            users.setdefault(table.broker_of(user), user)
        for user in users.values():
            server.poll(user, ack="")
        publisher = AmqpPublisher(urls)
        for broker, user in users.items():
            event = message(id=broker, sender_id=2, message="placed")
            assert publisher.to_user(user, event).routed
            assert brokers[broker].messages_in(f"event_queue:user:{user}") == 1
            assert [e["id"] for e in server.poll(user, ack="")] == [event.id]
        reordered = ",".join(broker.url for broker in reversed(brokers))
        with pytest.raises(Refused, match="records another place"):
            AmqpPublisher(reordered).to_user(users[0], message(id=1, sender_id=2, message="x"))
    finally:
        server.stop()
        for broker in brokers:
            broker.stop()
