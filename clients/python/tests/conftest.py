"""Fixtures over the real things: the shared RabbitMQ (`AMQP_URL`), a private node for
the test that restarts a broker (`scripts/private-rabbitmq`, never the shared one), and
the server users poll (`longpoll-local`, the binary `LONGPOLL_LOCAL_BIN` names, or the
workspace's debug build)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import jwt
import pytest

REPOSITORY = Path(__file__).resolve().parents[3]
DEV_JWT_SECRET = "longpoll-local-dev-secret"
DEV_PUBLISH_KEY = "local-publish-key"
HOLD_MS = 2000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def unique_id() -> int:
    """A user or college id no other run uses (the broker outlives test runs)."""
    return int(time.time() * 1_000_000) % 10**15 + int.from_bytes(os.urandom(2), "big")


class Server:
    """A running `longpoll-local`, polled over HTTP as a browser would; on several
    brokers (`AMQP_URLS`) when `several`."""

    def __init__(self, amqp_url: str, several: bool = False) -> None:
        binary = os.environ.get("LONGPOLL_LOCAL_BIN") or str(
            Path(os.environ.get("CARGO_TARGET_DIR", REPOSITORY / "target"))
            / "debug"
            / "longpoll-local"
        )
        if not Path(binary).exists():
            pytest.fail(f"no server binary at {binary}: cargo build -p longpoll-local")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        environment = {
            **os.environ,
            "AMQP_URLS" if several else "AMQP_URL": amqp_url,
            "LISTEN_ADDR": f"127.0.0.1:{port}",
            "METRICS_ADDR": "off",
            "POLL_TIMEOUT_MS": str(HOLD_MS),
            "RUST_LOG": "warn",
        }
        environment.pop("AMQP_URL" if several else "AMQP_URLS", None)
        self.process = subprocess.Popen([binary], env=environment)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "api/v1/communication/poll/test/", timeout=1)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    pytest.fail("the local server did not start")
                time.sleep(0.1)

    def token(self, user_id: int, college_id: Optional[int] = None) -> str:
        claims: dict[str, Any] = {"sub": str(user_id), "exp": int(time.time()) + 600}
        if college_id is not None:
            claims["college_id"] = college_id
        return jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256")

    def poll(
        self, user_id: int, college_id: Optional[int] = None, ack: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """One long poll; its events. `ack` given (even empty): cursor mode."""
        query = "" if ack is None else f"?ack={ack}"
        request = urllib.request.Request(
            self.url + "api/v1/communication/poll/events/" + query,
            headers={"Authorization": f"Bearer {self.token(user_id, college_id)}"},
        )
        with urllib.request.urlopen(request, timeout=HOLD_MS / 1000 + 10) as response:
            events: list[dict[str, Any]] = json.loads(response.read())["events"]
            return events

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class PrivateBroker:
    """A RabbitMQ node of this test's own, which it may stop and start."""

    script = str(REPOSITORY / "scripts" / "private-rabbitmq")

    def __init__(self) -> None:
        self.port = free_port()
        self.node = f"longpoll-{self.port}@localhost"
        environment = {**os.environ, "DIST_PORT": str(free_port())}
        subprocess.run(
            [self.script, "start", str(self.port)],
            env=environment,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args], check=True, capture_output=True, text=True
        ).stdout

    def restart(self) -> None:
        self.ctl("stop_app")
        self.ctl("start_app")
        self.ctl("await_startup")

    def messages_in(self, queue: str) -> int:
        for line in self.ctl("list_queues", "name", "messages", "--no-table-headers").splitlines():
            name, _, count = line.partition("\t")
            if name == queue:
                return int(count)
        return 0

    def stop(self) -> None:
        subprocess.run(
            [self.script, "stop", str(self.port)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")


@pytest.fixture(scope="session")
def server(amqp_url: str) -> Iterator[Server]:
    running = Server(amqp_url)
    yield running
    running.stop()


@pytest.fixture()
def private_broker() -> Iterator[PrivateBroker]:
    broker = PrivateBroker()
    yield broker
    broker.stop()
