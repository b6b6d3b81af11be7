"""Bearer-token authentication of the service (docs/design.md "serve/").

The token comes from an environment variable or a file; it is compared in constant time
(:func:`hmac.compare_digest`). A server bound to a non-loopback address refuses to start without
one: an open guard in front of a model is an open model.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from peftshield.errors import PeftshieldError

TOKEN_ENV = "PEFTSHIELD_TOKEN"
MIN_TOKEN_CHARS = 16


def read_token(token_file: str | None = None, env: str = TOKEN_ENV) -> str | None:
    """The bearer token from ``token_file`` (first line, stripped) or else the ``env`` variable.

    Returns ``None`` when neither is set. A file that is missing, empty or a token shorter than
    :data:`MIN_TOKEN_CHARS` characters is an error.
    """
    if token_file is not None:
        path = Path(token_file)
        if not path.is_file():
            raise PeftshieldError(f"token file not found: {token_file}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise PeftshieldError(f"cannot read token file {token_file}: {type(err).__name__}") from None
        token = lines[0].strip() if lines else ""
        source = f"token file {token_file}"
    else:
        token = os.environ.get(env, "").strip()
        if not token:
            return None
        source = f"${env}"
    if len(token) < MIN_TOKEN_CHARS:
        raise PeftshieldError(f"the token in {source} is shorter than {MIN_TOKEN_CHARS} characters")
    return token


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback ``host`` without a token (before any model is loaded)."""
    if token is None and not is_loopback(host):
        raise PeftshieldError(
            f"refusing to serve on {host} without a token: set ${TOKEN_ENV} or give --token-file "
            "(or bind to 127.0.0.1)"
        )


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant-time comparison)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))
