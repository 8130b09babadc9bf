"""Policy by key: which limits a (user, endpoint) pair gets, changeable at run time.

Resolution, most specific first: the endpoint's limits if the endpoint has any (an endpoint
limit *overrides* the user's, as in the seed's ``RateLimiter``), else the user's, else the
default. Each (user, endpoint) key is its own scope path, ``<namespace>:<user>/endpoint:<e>``,
so keys never share counters and every user is its own Redis Cluster hash slot.

A ``Limiter`` installs a key's limits on the store the first time it meets the key, and again
after the policy changes (``version``): changed caps are replaced in place (their windows keep
their usage), dropped limits are removed. Every process installs from its own policy object:
give every process the same policy.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from budgeteer.errors import InvalidInput
from budgeteer.limiters._acquire import Spec, to_limit
from budgeteer.model import Limit, parse_path

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_ENDPOINT = "default"


def key_segment(name: str, field_name: str) -> str:
    """A user id or endpoint as a scope-path name, reversibly.

    Names made of letters, digits and ``._@+-`` (up to 128) are kept; anything else (``/api``,
    spaces, unicode) becomes ``x=<hex of its UTF-8>``. Kept names never contain ``=``, so the
    two forms cannot collide.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(field_name, name, "expected a non-empty str")
    if _SAFE_NAME.fullmatch(name):
        return name
    encoded = "x=" + name.encode().hex()
    if len(encoded) > 128:
        raise InvalidInput(field_name, name, "too long (at most 63 bytes of UTF-8 when encoded)")
    return encoded


class KeyPolicy:
    """The limits of each (user, endpoint) key: endpoint > user > default.

    Example::

        policy = KeyPolicy(default=[Rate.per_minute(60)])
        policy.set_user("alice", Rate.per_minute(600), Rate.per_day(10_000))
        policy.set_endpoint("/v1/chat", Rate.per_minute(20), Pacing(rate=1, burst=5))
        limiter = Limiter("redis://localhost:6379/0", policy=policy)
        limiter.try_acquire(limiter.key("alice", "/v1/chat"))

    Thread-safe; every change bumps ``version``, and limiters reinstall a key's limits on its
    next use.
    """

    def __init__(self, default: Iterable[Spec] = (), *, namespace: str = "ratelimit") -> None:
        if not isinstance(namespace, str) or not _KIND.fullmatch(namespace):
            raise InvalidInput(
                "namespace", namespace, "lower-case letters, digits, _ or -, at most 32"
            )
        self.namespace = namespace
        """The first path segment's kind: keys live under ``<namespace>:<user>``."""
        self._lock = threading.Lock()
        self._default: tuple[Limit, ...] = self._limits(default, "default")
        self._users: dict[str, tuple[Limit, ...]] = {}
        self._endpoints: dict[str, tuple[Limit, ...]] = {}
        self._version = 0

    @property
    def version(self) -> int:
        """Bumped by every change."""
        return self._version

    @staticmethod
    def _limits(specs: object, field_name: str) -> tuple[Limit, ...]:
        if isinstance(specs, str | bytes) or not isinstance(specs, Iterable):
            raise InvalidInput(field_name, specs, "expected specs (Rate, Pacing, Limit ...)")
        limits = tuple(to_limit(spec) for spec in specs)
        keys = [(limit.dimension, limit.window.key) for limit in limits]
        if len(set(keys)) != len(keys):
            raise InvalidInput(field_name, specs, "at most one limit per dimension and window")
        return limits

    def set_default(self, *specs: Spec) -> None:
        """The limits of keys whose user and endpoint have none of their own."""
        limits = self._limits(specs, "default")
        with self._lock:
            self._default = limits
            self._version += 1

    def set_user(self, user: str, *specs: Spec) -> None:
        """``user``'s limits on every endpoint without limits of its own."""
        key_segment(user, "user")
        limits = self._limits(specs, "user limits")
        with self._lock:
            self._users[user] = limits
            self._version += 1

    def set_endpoint(self, endpoint: str, *specs: Spec) -> None:
        """``endpoint``'s limits, per user; they override the user's and the default."""
        key_segment(endpoint, "endpoint")
        limits = self._limits(specs, "endpoint limits")
        with self._lock:
            self._endpoints[endpoint] = limits
            self._version += 1

    def clear_user(self, user: str) -> bool:
        """Drop ``user``'s own limits (the default applies again); ``True`` if it had some."""
        with self._lock:
            found = self._users.pop(user, None) is not None
            self._version += 1
            return found

    def clear_endpoint(self, endpoint: str) -> bool:
        """Drop ``endpoint``'s own limits; ``True`` if it had some."""
        with self._lock:
            found = self._endpoints.pop(endpoint, None) is not None
            self._version += 1
            return found

    def resolve(self, user: str, endpoint: str | None = None) -> tuple[Limit, ...]:
        """The limits that apply to ``(user, endpoint)``: endpoint > user > default."""
        with self._lock:
            if endpoint is not None and endpoint in self._endpoints:
                return self._endpoints[endpoint]
            if user in self._users:
                return self._users[user]
            return self._default

    def source(self, user: str, endpoint: str | None = None) -> str:
        """Where ``resolve``'s answer comes from: ``"endpoint"``, ``"user"`` or ``"default"``."""
        with self._lock:
            if endpoint is not None and endpoint in self._endpoints:
                return "endpoint"
            return "user" if user in self._users else "default"

    def path(self, user: str, endpoint: str | None = None) -> str:
        """The scope path of the key ``(user, endpoint)``."""
        user_name = key_segment(user, "user")
        endpoint_name = key_segment(endpoint or DEFAULT_ENDPOINT, "endpoint")
        path = f"{self.namespace}:{user_name}/endpoint:{endpoint_name}"
        parse_path(path)
        return path

    def user_scope(self, user: str) -> str:
        """The scope above all of ``user``'s keys."""
        return f"{self.namespace}:{key_segment(user, 'user')}"

    def endpoints(self) -> tuple[str, ...]:
        """The endpoints with limits of their own."""
        with self._lock:
            return tuple(self._endpoints)


__all__ = ["DEFAULT_ENDPOINT", "KeyPolicy", "key_segment"]
