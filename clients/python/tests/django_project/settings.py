"""The smallest Django project that uses longpoll: the app, a database for transactions,
and `LONGPOLL` from the environment the tests set."""

import os

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["longpoll.django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
LONGPOLL = {
    "AMQP_URL": os.environ.get("LONGPOLL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    "HTTP_URL": os.environ.get("LONGPOLL_HTTP_URL", ""),
    "JWT_SECRET": "longpoll-local-dev-secret",
    "TIMEOUT": 2,
}
