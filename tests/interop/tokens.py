"""Mint a user token with bare PyJWT, no code of ours: proof that the contract's
tokens (docs/contract.md, "User tokens") need nothing but a stock JWT library.

Run by tests/interop.rs:  python tokens.py SECRET USER_ID LIFETIME_SECONDS [COLLEGE_ID]
A negative lifetime makes an expired token.
"""
import sys
import time

import jwt


def user_token(secret, user_id, college_id=None, name=None, lifetime=3600):
    claims = {"sub": str(user_id), "exp": int(time.time()) + lifetime}
    if college_id is not None:
        claims["college_id"] = college_id
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm="HS256")


if __name__ == "__main__":
    secret, user_id, lifetime = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    college_id = int(sys.argv[4]) if len(sys.argv) > 4 else None
    print(user_token(secret, user_id, college_id=college_id, lifetime=lifetime))
