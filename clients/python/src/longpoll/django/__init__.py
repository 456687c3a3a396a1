"""Django integration (`pip install longpoll[django]`): add `"longpoll.django"` to
`INSTALLED_APPS` and a `LONGPOLL` settings dict, then publish from views and signals.

    LONGPOLL = {
        # AMQP, as the server's own settings name the brokers (one, or several):
        "AMQP_URL": "amqps://user:password@b-1234.mq.eu-west-1.amazonaws.com:5671",
        # "AMQP_URLS": "amqps://…b-1…,amqps://…b-2…", "AMQP_SLOTS": "…",
        # or HTTP, to the publish endpoint, with a key or IAM:
        # "HTTP_URL": "https://api.example.com/", "API_KEY": "…", or "IAM_REGION": "eu-west-1",
        # for online(): the endpoint and the key user tokens are signed with
        "JWT_SECRET": "…",
    }

    from longpoll import message
    from longpoll.django import publish_on_commit

    with transaction.atomic():
        msg = Message.objects.create(...)
        publish_on_commit(message(id=msg.id, sender_id=..., message=msg.text), user=receiver_id)

The publisher is built once per process from the settings and shared by its threads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import transaction

from .. import tokens
from ..amqp import DEFAULT_EXCHANGE, AmqpPublisher
from ..events import Event
from ..http import Endpoint, HttpPublisher
from ..publisher import Audience, College, Publisher, Receipt, User

logger = logging.getLogger("longpoll")

_lock = threading.Lock()
_publisher: Optional[Publisher] = None

#: How long the token `online()` signs for itself lives, in seconds.
ONLINE_TOKEN_LIFETIME = 60


def _settings() -> Mapping[str, Any]:
    value = getattr(settings, "LONGPOLL", None)
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured("settings.LONGPOLL must be a dict (see longpoll.django)")
    return value


def build_publisher(config: Mapping[str, Any]) -> Publisher:
    """The publisher the settings describe: AMQP when they name brokers, else HTTP."""
    urls = config.get("AMQP_URLS") or config.get("AMQP_URL")
    timeout = float(config.get("TIMEOUT", 5.0))
    if urls:
        return AmqpPublisher(
            urls,
            slots=config.get("AMQP_SLOTS"),
            exchange=config.get("EXCHANGE", DEFAULT_EXCHANGE),
            timeout=timeout,
        )
    if config.get("HTTP_URL"):
        return HttpPublisher(
            config["HTTP_URL"],
            api_key=config.get("API_KEY"),
            iam_region=config.get("IAM_REGION"),
            timeout=timeout,
        )
    raise ImproperlyConfigured("settings.LONGPOLL needs AMQP_URL, AMQP_URLS or HTTP_URL")


def get_publisher() -> Publisher:
    """This process's publisher, built from `settings.LONGPOLL` on first use."""
    global _publisher
    with _lock:
        if _publisher is None:
            _publisher = build_publisher(_settings())
        return _publisher


def _forget_publisher(*, setting: str, **_: Any) -> None:
    """A changed `LONGPOLL` setting (tests' `override_settings`) takes effect."""
    global _publisher
    if setting == "LONGPOLL":
        with _lock:
            if _publisher is not None:
                _publisher.close()
            _publisher = None


setting_changed.connect(_forget_publisher)


def _audiences(
    user: Optional[int], users: Optional[Iterable[int]], college: Optional[int]
) -> list[Audience]:
    audiences: list[Audience] = []
    if user is not None:
        audiences.append(User(user))
    audiences.extend(User(user_id) for user_id in users or ())
    if college is not None:
        audiences.append(College(college))
    if not audiences:
        raise ValueError("name an audience: user=, users= or college=")
    return audiences


def publish(
    event: Event,
    *,
    user: Optional[int] = None,
    users: Optional[Iterable[int]] = None,
    college: Optional[int] = None,
) -> list[Receipt]:
    """Publishes now: one receipt per audience, in order."""
    return get_publisher().publish([(a, event) for a in _audiences(user, users, college)])


def publish_on_commit(
    event: Event,
    *,
    user: Optional[int] = None,
    users: Optional[Iterable[int]] = None,
    college: Optional[int] = None,
    using: Optional[str] = None,
) -> None:
    """Publishes once the surrounding transaction commits, and never if it rolls back
    (outside a transaction: at once). The event was checked when it was built, so a bad
    one raised already; a broker that fails at commit time is logged with the event's
    id, not raised into the code that committed."""
    audiences = _audiences(user, list(users or ()), college)

    def send() -> None:
        try:
            get_publisher().publish([(audience, event) for audience in audiences])
        except Exception:
            logger.exception("longpoll: event %s was not published after commit", event.id)

    transaction.on_commit(send, using=using)


def user_token(user_id: int, college_id: Optional[int] = None, lifetime: int = 3600) -> str:
    """A user token for the browser client, signed with `LONGPOLL["JWT_SECRET"]`."""
    secret = _settings().get("JWT_SECRET")
    if not secret:
        raise ImproperlyConfigured("settings.LONGPOLL needs JWT_SECRET to sign user tokens")
    return tokens.user_token(secret, user_id, college_id, lifetime=lifetime)


def online(
    user_ids: Iterable[int], *, viewer_id: int, college_id: Optional[int] = None
) -> dict[int, bool]:
    """Whether each user is online, asked over the online lookup as the user `viewer_id`
    (usually `request.user.id`; with `college_id`, only that college's members can be
    seen online, as the browser would see them). Needs `HTTP_URL` and `JWT_SECRET`."""
    config = _settings()
    if not config.get("HTTP_URL"):
        raise ImproperlyConfigured("settings.LONGPOLL needs HTTP_URL for online()")
    lookup = Endpoint(config["HTTP_URL"], timeout=float(config.get("TIMEOUT", 5.0)))
    token = user_token(viewer_id, college_id, lifetime=ONLINE_TOKEN_LIFETIME)
    return lookup.online(user_ids, token)
