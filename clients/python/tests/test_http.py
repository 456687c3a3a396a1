"""Publishing over HTTP to the local server's publish endpoint with its key, the online
lookup, the asyncio API, and the IAM signature botocore computes."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import threading
import time
from unittest import mock

import pytest
from conftest import DEV_PUBLISH_KEY, Server, unique_id

from longpoll import Endpoint, HttpPublisher, InvalidEvent, Refused, message, notification, typing
from longpoll.aio import AsyncPublisher
from longpoll.http import sigv4_headers


def test_the_endpoint_publishes_with_its_key(server: Server) -> None:
    user, college = unique_id(), unique_id()
    server.poll(user, college_id=college, ack="")
    publisher = HttpPublisher(server.url, api_key=DEV_PUBLISH_KEY)
    event = message(id=1, sender_id=2, message="over HTTP")
    receipt = publisher.to_user(user, event)
    assert (receipt.id, receipt.routed) == (event.id, True)
    assert publisher.to_user(unique_id(), event).routed is False
    notice = publisher.to_college(college, notification(title="T", message="M"))
    assert notice.routed
    delivered = server.poll(user, college_id=college, ack="")
    assert [e["id"] for e in delivered] == [event.id, notice.id]
    assert delivered[0]["data"] == dict(event.data)


def test_many_users_in_one_call_one_receipt_each(server: Server) -> None:
    polling, away = unique_id(), unique_id()
    server.poll(polling, ack="")
    event = typing(sender_id=2, is_typing=True)
    receipts = HttpPublisher(server.url, api_key=DEV_PUBLISH_KEY).to_users([polling, away], event)
    assert [(r.id, r.routed) for r in receipts] == [(event.id, True), (event.id, False)]


def test_a_wrong_key_is_refused_with_the_servers_code(server: Server) -> None:
    publisher = HttpPublisher(server.url, api_key="not-the-key")
    with pytest.raises(Refused) as refused:
        publisher.to_user(1, message(id=1, sender_id=2, message="x"))
    assert (refused.value.status, refused.value.code) == (401, "invalid_api_key")


def test_a_bad_event_raises_before_any_request(server: Server) -> None:
    publisher = HttpPublisher(server.url, api_key=DEV_PUBLISH_KEY)
    with mock.patch("urllib.request.urlopen") as urlopen:
        with pytest.raises(InvalidEvent, match="data.title: expected a string"):
            publisher.to_college(1, notification(title=None, message="m"))  # type: ignore[arg-type]
        urlopen.assert_not_called()


def test_the_online_lookup(server: Server) -> None:
    online, offline = unique_id(), unique_id()
    server.poll(online, ack="")
    endpoint = Endpoint(server.url)
    assert endpoint.online([online, offline], server.token(unique_id())) == {
        online: True,
        offline: False,
    }
    assert endpoint.check()[0].endswith("ok (Long polling is working)")


def test_the_asyncio_api_reaches_a_held_poll(server: Server) -> None:
    user = unique_id()
    server.poll(user, ack="")
    delivered: list[str] = []
    poll = threading.Thread(
        target=lambda: delivered.extend(e["id"] for e in server.poll(user, ack=""))
    )
    poll.start()
    time.sleep(0.5)
    publisher = AsyncPublisher(HttpPublisher(server.url, api_key=DEV_PUBLISH_KEY))

    async def publish() -> str:
        receipt = await publisher.to_user(user, message(id=1, sender_id=2, message="async"))
        assert receipt.routed
        assert await publisher.online([user], server.token(unique_id())) == {user: True}
        return receipt.id

    event_id = asyncio.run(publish())
    poll.join()
    assert delivered == [event_id]


# --- IAM --------------------------------------------------------------------------------

ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
NOW = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.timezone.utc)


def expected_sigv4(url_host: str, path: str, body: bytes, region: str) -> dict[str, str]:
    """SigV4 by hand, from AWS's published algorithm: the value botocore must match."""
    stamp, day = NOW.strftime("%Y%m%dT%H%M%SZ"), NOW.strftime("%Y%m%d")
    signed = "content-type;host;x-amz-date"
    canonical = "\n".join(
        [
            "POST",
            path,
            "",
            "content-type:application/json",
            f"host:{url_host}",
            f"x-amz-date:{stamp}",
            "",
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/execute-api/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + SECRET_KEY).encode()
    for part in (day, region, "execute-api", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}",
        "X-Amz-Date": stamp,
    }


def test_iam_requests_carry_botocores_sigv4_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    host = "abc123.execute-api.eu-west-1.amazonaws.com"
    path = "/api/v1/communication/events/"
    body = b'{"events": []}'
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
        headers = sigv4_headers("POST", f"https://{host}{path}", body, "eu-west-1")
    expected = expected_sigv4(host, path, body, "eu-west-1")
    assert headers["Authorization"] == expected["Authorization"]
    assert headers["X-Amz-Date"] == expected["X-Amz-Date"]
