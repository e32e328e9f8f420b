"""Who may use the dashboard (a token, as Bearer, basic password or login cookie) and CSRF tokens.

With a token set, a request is let in when it carries ``Authorization: Bearer <token>``, HTTP basic
credentials whose password is the token (any user name), or the session cookie the login form
sets. The cookie holds a random nonce and its HMAC under a key derived from the token, never the
token itself, so changing the token ends every session. Tokens are compared as SHA-256 digests in
constant time, and every failed attempt, whatever its scheme, waits FAILED_DELAY before its answer.

Every form that changes something carries a CSRF token: a random value kept in the ``pgjobs_csrf``
cookie and sent again in the form (double submit); JSON actions send it in the ``X-CSRF-Token``
header instead, unless they carry the Bearer token (which a browser never adds on its own).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets

from starlette.requests import Request

SESSION_COOKIE = "pgjobs_session"
CSRF_COOKIE = "pgjobs_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
#: Seconds a request with a wrong token (form, Bearer, basic or session cookie) waits: slows guessing.
FAILED_DELAY = 0.5


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class TokenAuth:
    """Checks requests against the dashboard's token (None: every request is let in)."""

    def __init__(self, token: str | None) -> None:
        if token is not None and not token.strip():
            raise ValueError("the token must not be empty")
        self._token = token
        self._digest = _digest(token) if token else b""
        self._key = hashlib.sha256(b"pgjobs dashboard session\0" + token.encode()).digest() if token else b""

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check_token(self, given: str) -> bool:
        """Whether a token typed into the login form (or sent otherwise) is the token."""
        # Digests of equal length: compare_digest then takes as long whatever the guess's length.
        return self._token is not None and hmac.compare_digest(_digest(given), self._digest)

    def bearer(self, request: Request) -> bool:
        """Whether the request carries the token as ``Authorization: Bearer``."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def _basic(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, _, password = decoded.partition(":")
        return self.check_token(password)

    def new_session(self) -> str:
        """A session cookie's value: a random nonce and its HMAC."""
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()

    def _session(self, request: Request) -> bool:
        nonce, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
        return bool(nonce and signature) and _equal(signature, self._sign(nonce))

    def allows(self, request: Request) -> bool:
        """Whether the request may see the dashboard."""
        if self._token is None:
            return True
        return self.bearer(request) or self._basic(request) or self._session(request)

    def tried(self, request: Request) -> bool:
        """Whether the request brings credentials (an Authorization header or a session cookie):
        when allows() refuses it, a failed attempt, which failed() slows down."""
        return self.enabled and bool(request.headers.get("authorization") or request.cookies.get(SESSION_COOKIE))


async def failed() -> None:
    """Wait out a failed authentication (FAILED_DELAY), before answering it."""
    await asyncio.sleep(FAILED_DELAY)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def new_csrf() -> str:
    """A new CSRF token."""
    return secrets.token_urlsafe(32)


def csrf_token(request: Request) -> str:
    """The request's CSRF token: its cookie's, or the new one its response sets as the cookie."""
    new = request.scope.get("pgjobs.csrf")
    return str(new) if new else request.cookies.get(CSRF_COOKIE, "")


def csrf_ok(request: Request, sent: str | None) -> bool:
    """Whether ``sent`` (the form field or header) matches the request's CSRF cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    return bool(sent) and len(cookie) >= 32 and _equal(sent or "", cookie)


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Origin, Sec-Fetch-Site)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host
