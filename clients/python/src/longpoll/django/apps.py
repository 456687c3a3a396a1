"""The Django app that brings the `check_longpoll` management command."""

from django.apps import AppConfig


class LongpollConfig(AppConfig):  # type: ignore[misc]
    name = "longpoll.django"
    label = "longpoll"
    verbose_name = "longpoll"
