"""Keeping secrets out of messages and files: API keys, and passwords written into a URL."""
from __future__ import annotations

import re
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

# scheme://user:password@  or  scheme://token@  anywhere in a text
_CREDENTIALS_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")


def redact(text: str, secret: Optional[str]) -> str:
    """``text`` with the secret replaced: a server may echo a key back in an error body."""
    return text.replace(secret, "***") if secret else text


def redact_url(url: str) -> str:
    """The URL without any user:password part, for logs and summaries."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
        port = parts.port
    except ValueError:  # a port that is not a number: fall back to the text rule
        return scrub_credentials(url)
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{port}" if port else "")))


def scrub_credentials(text: str) -> str:
    """``text`` with the credentials of every URL in it removed (the last guard before a message is shown)."""
    return _CREDENTIALS_IN_URL.sub(r"\1", text)
