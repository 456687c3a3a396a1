"""Publishing over HTTP to the publish endpoint (`POST /api/v1/communication/events/`),
and the online lookup (`GET /api/v1/communication/poll/online/`).

The publish endpoint takes the key the server was given (`X-Api-Key`), or, behind API
Gateway on AWS, a request signed with IAM (SigV4, service `execute-api`), which botocore
computes from the usual AWS credentials (`pip install longpoll[aws]`). A `503` is retried
after its `Retry-After`, a few times; a `4xx` raises `Refused` with the server's error
code and message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

from .events import Event
from .publisher import Audience, BrokerUnavailable, Publisher, Receipt, Refused, User

PUBLISH_PATH = "api/v1/communication/events/"
ONLINE_PATH = "api/v1/communication/poll/online/"
TEST_PATH = "api/v1/communication/poll/test/"
#: The most events one request may carry, and user ids one lookup may name.
MAX_EVENTS_PER_REQUEST = 100
MAX_USERS_PER_LOOKUP = 100
#: The longest `Retry-After` honoured before giving up, in seconds.
MAX_RETRY_AFTER = 5.0


class Endpoint:
    """The server's HTTP API at `base_url` (e.g. `https://api.example.com/`): its test
    route and the online lookup. `timeout` bounds each request in seconds; a `503` is
    retried `retries` times."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, retries: int = 2) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout
        self.retries = retries

    def _send(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        auth: Callable[[str, str, bytes], dict[str, str]],
    ) -> dict[str, Any]:
        url = self.base_url + path
        for attempt in range(self.retries + 1):
            headers = {"Accept": "application/json"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            headers.update(auth(method, url, body or b""))
            request = urllib.request.Request(url, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer: dict[str, Any] = json.loads(response.read())
                    return answer
            except urllib.error.HTTPError as error:
                text = error.read().decode("utf-8", "replace")
                failure = _failure(error.code, text)
                wait = _retry_after(error.headers.get("Retry-After"))
                if error.code != 503 or attempt == self.retries or wait is None:
                    raise failure from None
                time.sleep(wait)
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise BrokerUnavailable(f"{url} could not be reached: {reason}") from None
        raise AssertionError("every attempt returns or raises")

    def check(self) -> list[str]:
        """Reaches the test route and says what it found; raises `BrokerUnavailable`
        when nothing answers."""
        answer = self._send("GET", TEST_PATH, None, _no_auth)
        return [f"{self.base_url}: {answer.get('status')} ({answer.get('message')})"]

    def online(self, user_ids: Iterable[int], token: str) -> dict[int, bool]:
        """Whether each user is online, asked as the user whose token this is (a token
        with a college sees only that college's members; everyone else is `False`)."""
        ids = list(user_ids)
        found: dict[int, bool] = {}
        bearer = {"Authorization": f"Bearer {token}"}
        for start in range(0, len(ids), MAX_USERS_PER_LOOKUP):
            chunk = ids[start : start + MAX_USERS_PER_LOOKUP]
            query = "?user_ids=" + ",".join(str(user_id) for user_id in chunk)
            answer = self._send("GET", ONLINE_PATH + query, None, lambda *_: bearer)
            found.update({int(user): bool(up) for user, up in answer["online"].items()})
        return found


class HttpPublisher(Endpoint, Publisher):
    """Publishes through the endpoint at `base_url`.

    Give `api_key` (the server's `PUBLISH_API_KEY`), or `iam_region` to sign with IAM
    (credentials from botocore's usual chain: environment, profile, instance role).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: Optional[str] = None,
        iam_region: Optional[str] = None,
        timeout: float = 10.0,
        retries: int = 2,
    ) -> None:
        if (api_key is None) == (iam_region is None):
            raise ValueError("give api_key or iam_region (IAM-signed requests), one of them")
        super().__init__(base_url, timeout=timeout, retries=retries)
        self.api_key = api_key
        self.iam_region = iam_region

    def publish(self, items: Sequence[tuple[Audience, Event]]) -> list[Receipt]:
        receipts: list[Receipt] = []
        for start in range(0, len(items), MAX_EVENTS_PER_REQUEST):
            batch = items[start : start + MAX_EVENTS_PER_REQUEST]
            body = json.dumps({"events": [_wire(audience, event) for audience, event in batch]})
            answer = self._send("POST", PUBLISH_PATH, body.encode("utf-8"), self._auth)
            receipts.extend(
                Receipt(
                    item["id"],
                    bool(item["routed"]),
                    tuple(item.get("unreached_shards", ())),
                )
                for item in answer["published"]
            )
        return receipts

    def _auth(self, method: str, url: str, body: bytes) -> dict[str, str]:
        if self.api_key is not None:
            return {"X-Api-Key": self.api_key}
        assert self.iam_region is not None
        return sigv4_headers(method, url, body, self.iam_region)


def _no_auth(method: str, url: str, body: bytes) -> dict[str, str]:
    return {}


def _wire(audience: Audience, event: Event) -> Mapping[str, Any]:
    target = (
        {"user_id": audience.user_id}
        if isinstance(audience, User)
        else {"college_id": audience.college_id}
    )
    return {**target, "id": event.id, "event": event.event, "data": event.data}


def _failure(status: int, text: str) -> Exception:
    try:
        error = json.loads(text)
        code, message = error.get("error"), error.get("message", text)
    except ValueError:
        code, message = None, text
    if status == 503:
        return BrokerUnavailable(f"503 {code}: {message}")
    return Refused(f"{status} {code}: {message}", status=status, code=code)


def _retry_after(header: Optional[str]) -> Optional[float]:
    try:
        seconds = float(header) if header is not None else 1.0
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def sigv4_headers(method: str, url: str, body: bytes, region: str) -> dict[str, str]:
    """The headers of an IAM-signed request to API Gateway (`execute-api`), signed by
    botocore with the credentials its default chain finds."""
    try:
        import botocore.auth
        import botocore.awsrequest
        import botocore.session
    except ImportError:
        raise RuntimeError("IAM signing needs botocore: pip install longpoll[aws]") from None
    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise Refused("no AWS credentials found to sign the publish request")
    request = botocore.awsrequest.AWSRequest(
        method=method, url=url, data=body, headers={"Content-Type": "application/json"}
    )
    botocore.auth.SigV4Auth(credentials, "execute-api", region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}
