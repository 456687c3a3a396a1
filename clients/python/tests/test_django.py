"""The Django integration in a minimal project (`tests/django_project`): an event sent on
commit arrives, one whose transaction rolls back never does, `online()` asks the server,
and `manage.py check_longpoll` reports the broker up and down."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Server, free_port, unique_id

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def django_settings(server: Server, amqp_url: str) -> Iterator[None]:
    os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
    os.environ["LONGPOLL_AMQP_URL"] = amqp_url
    os.environ["LONGPOLL_HTTP_URL"] = server.url
    sys.path.insert(0, str(TESTS))
    import django

    django.setup()
    yield


def test_an_event_is_sent_when_the_transaction_commits(
    django_settings: None, server: Server
) -> None:
    from django.db import transaction

    from longpoll import message
    from longpoll.django import publish_on_commit

    user = unique_id()
    server.poll(user, ack="")
    committed = message(id=1, sender_id=2, message="committed")
    with transaction.atomic():
        publish_on_commit(committed, user=user)
        # Nothing leaves before the commit.
        assert server.poll(user, ack="") == []
    rolled_back = message(id=2, sender_id=2, message="rolled back")
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            publish_on_commit(rolled_back, user=user)
            raise RuntimeError("the view failed")
    assert [event["id"] for event in server.poll(user, ack="")] == [committed.id]


def test_online_asks_the_server(django_settings: None, server: Server) -> None:
    from longpoll.django import online

    polling, away = unique_id(), unique_id()
    server.poll(polling, ack="")
    assert online([polling, away], viewer_id=unique_id()) == {polling: True, away: False}


def check_longpoll(amqp_url: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "django_project.settings",
        "LONGPOLL_AMQP_URL": amqp_url,
        "PYTHONPATH": str(TESTS),
    }
    return subprocess.run(
        [sys.executable, "-m", "django", "check_longpoll"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_longpoll_with_the_broker_up_and_down(amqp_url: str) -> None:
    up = check_longpoll(amqp_url)
    assert up.returncode == 0, up.stderr
    from longpoll.amqp import _redacted

    assert (
        f"broker 0 ({_redacted(amqp_url)}): connected, exchange longpoll.events present"
        in up.stdout
    )
    assert "longpoll: OK" in up.stdout
    down = check_longpoll(f"amqp://guest:guest@127.0.0.1:{free_port()}/%2f")
    assert down.returncode == 1
    assert "CommandError: longpoll is not reachable: broker 0" in down.stderr
    assert "unavailable" in down.stderr
