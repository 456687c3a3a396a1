"""`manage.py check_longpoll`: reaches the broker (or the endpoint) that
`settings.LONGPOLL` names and says what it found, as the guide's `check_rabbitmq` did."""

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from longpoll.amqp import AmqpPublisher
from longpoll.django import _settings, build_publisher
from longpoll.http import Endpoint
from longpoll.publisher import PublishError


class Command(BaseCommand):  # type: ignore[misc]
    help = "Checks that the longpoll broker or publish endpoint in settings.LONGPOLL answers."

    def handle(self, *args: Any, **options: Any) -> None:
        publisher = build_publisher(_settings())
        assert isinstance(publisher, (AmqpPublisher, Endpoint))
        try:
            lines = publisher.check()
        except PublishError as error:
            raise CommandError(f"longpoll is not reachable: {error}") from None
        finally:
            publisher.close()
        for line in lines:
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS("longpoll: OK"))
