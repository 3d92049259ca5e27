"""Credentials never leave the process: the one function that hides them in source URIs and messages.

A camera URL often carries its password (``rtsp://admin:pw@cam/stream``, ``http://cam/snap?user=admin&pwd=pw``).
The SDK opens the stream with the URL as given, and uses :func:`redact` for everything it shows or stores: messages
on stderr, the status drawn on frames, logs and the metadata a gallery keeps.
"""

from __future__ import annotations

import os
import re

MASK = "***"
# the userinfo of any scheme://USERINFO@host URL (up to the last @ before the path: a password may hold an @)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s?#]*)@")
# ?password=...&token=... in a query string
SECRET_KEYS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "access_token",
    "api_key",
    "apikey",
    "key",
    "auth",
    "signature",
    "sig",
    "credential",
    "credentials",
)
_QUERY = re.compile(r"(?P<head>[?&;](?:" + "|".join(SECRET_KEYS) + r")=)(?P<secret>[^&;#\s]*)", re.IGNORECASE)


def redact(text: str | int | os.PathLike[str]) -> str:
    """``text`` (a source URI, or a message that contains URLs) with every credential replaced by ``***``.

    ``rtsp://admin:pw@host/s`` -> ``rtsp://admin:***@host/s``; ``rtsp://TOKEN@host`` -> ``rtsp://***@host``;
    ``http://cam/snap?user=a&password=pw`` -> ``http://cam/snap?user=a&password=***``. Anything else (a file path,
    a camera index) is returned as it is.
    """
    out = str(text) if isinstance(text, int) else os.fspath(text)
    if "://" not in out:
        return out
    out = _USERINFO.sub(lambda m: f"{m['head']}{_mask_userinfo(m['info'])}@", out)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", out)


def _mask_userinfo(info: str) -> str:
    """``user:password`` -> ``user:***``; a lone ``token`` (some cameras take the password alone) -> ``***``."""
    user, sep, _ = info.partition(":")
    return f"{user}:{MASK}" if sep else MASK
