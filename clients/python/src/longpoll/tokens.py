"""User tokens for the browser client: HS256 JWTs signed with the server's
`JWT_SECRET`, with the claims the contract names (`sub` as a string of digits, `exp`, and
optionally `college_id` and `name`)."""

from __future__ import annotations

import time
from typing import Any, Optional

import jwt


def user_token(
    secret: str,
    user_id: int,
    college_id: Optional[int] = None,
    name: Optional[str] = None,
    lifetime: int = 3600,
) -> str:
    """A token for `user_id` that lives `lifetime` seconds; with `college_id` the user
    also gets that college's events."""
    claims: dict[str, Any] = {"sub": str(user_id), "exp": int(time.time()) + lifetime}
    if college_id is not None:
        claims["college_id"] = college_id
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")
