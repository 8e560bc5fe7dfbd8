"""Who may write to the collector, and how fast: ingest credentials and rate limits.

`Credentials` holds an operator's ``user:hash`` lines (``clacky-ipy collect --hash-password``
makes a hash: `hashlib.scrypt`, salted) and checks a request's HTTP basic auth against them
in constant time, also for a user it does not know. `RateLimiter` is a token bucket per key
(a device id, a peer address) in a table of fixed size: memory stays bounded whatever the
number of distinct keys, and nothing of it is ever stored or logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

#: scrypt's cost: 16 MiB and some 50 ms a hash. A request pays it once per process and
#: credentials (`Credentials.cached`); a wrong password pays it every time.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_HASH = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")
#: Distinct accepted ``Authorization`` values remembered (a fixed bound, like the limiters').
CACHE_SIZE = 1024


class GuardError(ValueError):
    """An operator's mistake in a credentials file or a rate: ``str()`` is one line."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=min(2**31 - 1, 4 * 128 * r * n), dklen=size)


def hash_password(password: str) -> str:
    """The hash a credentials file holds for `password` (after ``user:``)."""
    salt = os.urandom(16)
    key = _derive(password.encode("utf-8"), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, 32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


class _Hash:
    def __init__(self, text: str) -> None:
        match = _HASH.fullmatch(text)
        if match is None:
            raise ValueError(text)
        n, r, p = (int(match.group(i)) for i in (1, 2, 3))
        if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 64 or not 1 <= p <= 16:
            raise ValueError(text)
        self.params = (n, r, p)
        self.salt = base64.b64decode(match.group(4), validate=True)
        self.key = base64.b64decode(match.group(5), validate=True)
        if not self.salt or not 16 <= len(self.key) <= 64:
            raise ValueError(text)

    def matches(self, password: bytes) -> bool:
        derived = _derive(password, self.salt, *self.params, len(self.key))
        return hmac.compare_digest(derived, self.key)


class Credentials:
    """The users allowed to POST, read from a file of ``user:hash`` lines (``#`` comments)."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {}
        for user, text in users.items():
            self._users[user] = _Hash(text)
        # An unknown user costs the same scrypt as a known one: its name is not told by timing.
        self._dummy = _Hash(hash_password(_b64(os.urandom(12))))
        self._secret = os.urandom(32)
        self._accepted: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | os.PathLike) -> Credentials:
        """The file's users; a `GuardError` (one line) when it cannot be read or a line is wrong."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise GuardError(f"credentials file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        users: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, hashed = line.partition(":")
            if not colon or not user:
                raise GuardError(f"credentials file {path}, line {number}: not user:hash")
            try:
                _Hash(hashed)
            except (ValueError, binascii.Error):
                raise GuardError(
                    f"credentials file {path}, line {number}: not a hash from `clacky-ipy collect --hash-password`"
                ) from None
            users[user] = hashed
        if not users:
            raise GuardError(f"credentials file {path}: no user:hash line")
        return cls(users)

    def cached(self, header: bytes | None) -> bool:
        """Whether this exact ``Authorization`` value was accepted before (no scrypt: cheap)."""
        if header is None:
            return False
        key = hmac.digest(self._secret, header, "sha256")
        with self._lock:
            if key in self._accepted:
                self._accepted.move_to_end(key)
                return True
        return False

    def check(self, header: bytes | None) -> bool:
        """Whether ``Authorization: Basic ...`` names a user and its password (a scrypt: slow)."""
        if header is None:
            return False
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, colon, password = base64.b64decode(token.strip(), validate=True).partition(b":")
            name = user.decode("utf-8")
        except (binascii.Error, UnicodeError):
            return False
        if not colon:
            return False
        known = self._users.get(name)
        good = (known or self._dummy).matches(password) and known is not None
        if good:
            key = hmac.digest(self._secret, header, "sha256")
            with self._lock:
                self._accepted[key] = None
                while len(self._accepted) > CACHE_SIZE:
                    self._accepted.popitem(last=False)
        return good


# -- rate limits -------------------------------------------------------------------------------
_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")


def parse_rate(text: str) -> float:
    """Events per second from ``N/s``, ``N/min`` or ``N/h``; a `GuardError` otherwise."""
    match = _RATE.fullmatch(text.lower())
    if match is None or match.group(2) not in _UNITS:
        raise GuardError(f"{text!r} is not a rate such as 10/s, 100/min or 1000/h")
    rate = float(match.group(1)) / _UNITS[match.group(2)]
    if not 0 < rate <= 1e6:
        raise GuardError(f"{text!r}: a rate must be above 0 and at most 1000000/s")
    return rate


#: Keys a limiter tracks at most. Past it, the key used least recently is forgotten (it
#: starts again with a full burst): a flood of new keys costs no memory, only its own burst.
MAX_KEYS = 65_536


class RateLimiter:
    """A token bucket of `burst` events refilled at `rate` a second, per key, `max_keys` keys at most."""

    def __init__(self, rate: float, burst: float, max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float | None = None) -> float:
        """0 when `key` may send one event now (counted), else the seconds until it may.

        Called on the event loop only (no lock needed)."""
        now = time.monotonic() if now is None else now
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                buckets.popitem(last=False)
            bucket = buckets[key] = [self.burst, now]
        else:
            buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate


def peer_key(host: str) -> str:
    """The key a peer is limited by: its IPv4 address, or its IPv6 /64 (what one subscriber gets)."""
    if ":" not in host:
        return host
    try:
        return str(ipaddress.ip_network(f"{host.split('%', 1)[0]}/64", strict=False))
    except ValueError:
        return host


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


#: The default burst: this many events at once, or ten seconds' worth, whichever is more.
MIN_BURST = 20
#: A peer (a NAT, an office) speaks for many devices: its limit is this many devices' by default.
PEER_FACTOR = 10


class Guard:
    """What a collector checks before it stores: credentials, then each peer's and device's rate."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        rate: float | None = None,
        burst: float | None = None,
        peer_rate: float | None = None,
    ) -> None:
        self.credentials = credentials
        self.devices = self.peers = None
        if rate is not None:
            burst = burst if burst is not None else max(MIN_BURST, 10 * rate)
            self.devices = RateLimiter(rate, burst)
            peer_rate = peer_rate if peer_rate is not None else PEER_FACTOR * rate
        if peer_rate is not None:
            base = rate if rate is not None else peer_rate
            self.peers = RateLimiter(peer_rate, (burst or max(MIN_BURST, 10 * base)) * peer_rate / base)

    @classmethod
    def from_options(
        cls,
        credentials: str | None = None,
        rate: str | None = None,
        burst: float | None = None,
        peer_rate: str | None = None,
    ) -> Guard:
        """From the command line's (or the environment's) texts; `GuardError` (one line) when wrong."""
        return cls(
            Credentials.load(credentials) if credentials else None,
            parse_rate(rate) if rate else None,
            burst,
            parse_rate(peer_rate) if peer_rate else None,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Guard:
        """For ``uvicorn clacky_ipy.collector:app``: the same settings from ``CLACKY_COLLECTOR_*``."""
        burst = env.get("CLACKY_COLLECTOR_BURST")
        try:
            number = float(burst) if burst else None
        except ValueError:
            raise GuardError(f"CLACKY_COLLECTOR_BURST={burst!r} is not a number") from None
        return cls.from_options(
            env.get("CLACKY_COLLECTOR_CREDENTIALS"),
            env.get("CLACKY_COLLECTOR_RATE_LIMIT"),
            number,
            env.get("CLACKY_COLLECTOR_PEER_RATE_LIMIT"),
        )

    @property
    def active(self) -> bool:
        return self.credentials is not None or self.devices is not None or self.peers is not None
