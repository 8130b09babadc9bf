"""``RateLimiter``: the seed's per-user, per-endpoint sliding-window limiter, on budgeteer.

A drop-in for the control-tower ``RateLimiter`` (same classes, methods, defaults and result
fields) built on a ``Limiter`` and a ``KeyPolicy``, so its windows live in any ledger backend
and several processes (or hosts, on Redis) share one set of limits.

``RateLimitConfig`` maps to limits on the key ``(user, endpoint)``::

    requests_per_minute -> Rate.per_minute   ("minute": 60 s rolling, 1 s buckets)
    requests_per_hour   -> Rate.per_hour     ("hour": 1 h rolling, 1 min buckets)
    requests_per_day    -> Rate.per_day      ("day": 24 h rolling, 24 min buckets)
    burst_allowance     -> Pacing            ("burst": at most N at once, refilled at the
                                              per-minute rate)

Deliberate differences, each documented where it applies:

* The windows are exact in the direction that matters: never more than the limit in any span
  of the window, refusing at most one bucket early (see ``budgeteer.limiters.rates``).
* ``check_rate_limit(record=False)`` peeks: ``exceeded`` and ``remaining`` are exact, but its
  ``retry_after`` is ``None`` (a peek does not read the buckets).
* ``get_usage``'s ``reset_in_seconds`` is the window's span: the longest time until the usage
  counted now has left it.
* ``reset_user`` and ``cleanup_expired`` act on the store for the keys this object knows (the
  configured endpoints, ``"default"``, and the keys it has checked); keys only other processes
  have used are left to them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from budgeteer._clock import Clock
from budgeteer.errors import InvalidInput
from budgeteer.ledger import Ledger
from budgeteer.limiters._acquire import Spec
from budgeteer.limiters.keys import DEFAULT_ENDPOINT, KeyPolicy
from budgeteer.limiters.limiter import Limiter
from budgeteer.limiters.pacing import Pacing
from budgeteer.limiters.rates import Rate
from budgeteer.model import Window
from budgeteer.tracker import LoggerProtocol

_SPANS = {60: "minute", 3600: "hour", 86400: "day"}


@dataclass(frozen=True)
class RateLimitConfig:
    """Request rates for one key; ``None`` means no limit on that window."""

    requests_per_minute: int | None = 60
    """Requests in any rolling minute."""
    requests_per_hour: int | None = 1000
    """Requests in any rolling hour."""
    requests_per_day: int | None = 10000
    """Requests in any rolling day."""
    burst_allowance: int | None = None
    """At most this many at once, refilled at ``requests_per_minute`` (``None``: no pacing)."""

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "requests_per_hour", "requests_per_day"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise InvalidInput(name, value, "expected a whole number >= 0 or None")
        burst = self.burst_allowance
        if burst is not None:
            if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                raise InvalidInput("burst_allowance", burst, "expected a whole number >= 1")
            if not self.requests_per_minute:
                raise InvalidInput(
                    "burst_allowance", burst, "needs requests_per_minute (the refill rate)"
                )

    def specs(self) -> tuple[Spec, ...]:
        """The limits this config stands for."""
        specs: list[Spec] = []
        if self.requests_per_minute is not None:
            specs.append(Rate.per_minute(self.requests_per_minute))
        if self.requests_per_hour is not None:
            specs.append(Rate.per_hour(self.requests_per_hour))
        if self.requests_per_day is not None:
            specs.append(Rate.per_day(self.requests_per_day))
        if self.burst_allowance is not None and self.requests_per_minute:
            specs.append(Pacing(self.requests_per_minute, 60, self.burst_allowance))
        return tuple(specs)


@dataclass(frozen=True)
class RateLimitResult:
    """The answer of ``check_rate_limit``."""

    exceeded: bool
    """True if the request was refused."""
    remaining: int | None = None
    """Allowed: requests left in the tightest window (after this one, if recorded)."""
    limit_type: str | None = None
    """Refused: ``"minute"``, ``"hour"``, ``"day"``, ``"burst"`` (or a window's description)."""
    current: int | None = None
    """Refused: requests counted in that window (including outstanding holds)."""
    limit: int | None = None
    """Refused: that window's limit."""
    retry_after: float | None = None
    """Refused: seconds until a request would be admitted (``None``: unknown or never)."""


def limit_type(window: Window | None) -> str:
    """The seed's name for a window: ``"minute"``, ``"hour"``, ``"day"`` or ``"burst"``."""
    if window is None:
        return "unknown"
    if window.kind == "pacing":
        return "burst"
    if window.kind == "rolling" and window.seconds in _SPANS:
        return _SPANS[window.seconds]
    return window.describe()


class RateLimiter:
    """Sliding-window rate limits per user and per endpoint (the seed's API), on a ledger.

    Args:
        logger: where refusals are logged (``logging.Logger``, structlog, a fake).
        default_config: the limits of keys without limits of their own (``RateLimitConfig()``).
        ledger: a ``Ledger`` or backend URL (default: in memory).
        clock: the ledger's clock when ``ledger`` is a URL.
        namespace: the first path segment's kind (keys are ``<namespace>:<user>/endpoint:<e>``).
    """

    def __init__(
        self,
        logger: LoggerProtocol | None = None,
        default_config: RateLimitConfig | None = None,
        *,
        ledger: Ledger | str = "memory://",
        clock: Clock | None = None,
        namespace: str = "ratelimit",
    ) -> None:
        self._logger = logger
        self._lock = threading.RLock()
        self._default = default_config or RateLimitConfig()
        self._users: dict[str, RateLimitConfig] = {}
        self._endpoints: dict[str, RateLimitConfig] = {}
        self._policy = KeyPolicy(self._default.specs(), namespace=namespace)
        self._limiter = Limiter(ledger, clock=clock, policy=self._policy)
        self._seen: dict[str, set[str]] = {}  # user -> endpoints checked by this object

    @property
    def limiter(self) -> Limiter:
        """The ``Limiter`` underneath (for ``acquire`` with a timeout, or weighted checks)."""
        return self._limiter

    # -- configuration --------------------------------------------------------------------------

    def set_default_config(self, config: RateLimitConfig) -> None:
        """Set the limits of keys without limits of their own."""
        _check_config(config)
        with self._lock:
            self._default = config
            self._policy.set_default(*config.specs())

    def set_user_limits(self, user_id: str, config: RateLimitConfig) -> None:
        """Set ``user_id``'s limits (on endpoints without limits of their own)."""
        _check_config(config)
        with self._lock:
            self._policy.set_user(user_id, *config.specs())
            self._users[user_id] = config

    def set_endpoint_limits(self, endpoint: str, config: RateLimitConfig) -> None:
        """Set ``endpoint``'s limits, per user; they override user limits."""
        _check_config(config)
        with self._lock:
            self._policy.set_endpoint(endpoint, *config.specs())
            self._endpoints[endpoint] = config

    def get_config(self, user_id: str, endpoint: str | None = None) -> RateLimitConfig:
        """The config in force for ``(user_id, endpoint)``: endpoint > user > default."""
        with self._lock:
            if endpoint is not None and endpoint in self._endpoints:
                return self._endpoints[endpoint]
            return self._users.get(user_id, self._default)

    # -- checking -------------------------------------------------------------------------------

    def check_rate_limit(
        self, user_id: str, endpoint: str = DEFAULT_ENDPOINT, record: bool = True
    ) -> RateLimitResult:
        """Check (and by default record) one request of ``user_id`` on ``endpoint``."""
        path = self._key(user_id, endpoint)
        if record:
            admission = self._limiter.try_acquire(path)
            error = admission.error
            if error is None:
                return RateLimitResult(False, remaining=_as_int(admission.remaining("requests")))
        else:
            headroom = self._limiter.ledger.peek(path)
            blocking = [
                h
                for h in headroom.limits
                if h.dimension == "requests" and h.used + h.held + 1 > h.limit  # type: ignore[operator]
            ]
            if not blocking:
                return RateLimitResult(False, remaining=_as_int(headroom.remaining("requests")))
            tight = blocking[0]
            return self._refused(
                user_id,
                endpoint,
                tight.window,
                tight.used + tight.held,  # type: ignore[operator]
                tight.limit,
                None,
            )
        return self._refused(
            user_id,
            endpoint,
            error.window,
            error.used + error.held,  # type: ignore[operator]
            error.limit,
            error.retry_after,
        )

    def get_usage(
        self, user_id: str, endpoint: str = DEFAULT_ENDPOINT
    ) -> dict[str, dict[str, Any]]:
        """Each window of the key: ``current``, ``limit``, ``remaining``, ``reset_in_seconds``."""
        path = self._key(user_id, endpoint)
        usage: dict[str, dict[str, Any]] = {}
        for limit in self._limiter.ledger.peek(path).limits:
            if limit.scope != path or limit.dimension != "requests":
                continue
            window = limit.window
            reset = window.seconds if window.kind == "rolling" else window.refill_s
            current = int(limit.used + limit.held)  # type: ignore[operator]
            usage[limit_type(window)] = {
                "current": current,
                "limit": int(limit.limit),
                "remaining": max(0, int(limit.limit) - current),
                "reset_in_seconds": reset,
            }
        return usage

    # -- administration -------------------------------------------------------------------------

    def reset_user(self, user_id: str) -> int:
        """Clear every window of ``user_id``'s keys this object knows; returns how many."""
        with self._lock:
            endpoints = {DEFAULT_ENDPOINT, *self._endpoints, *self._seen.get(user_id, ())}
        ledger = self._limiter.ledger
        cleared = 0
        for endpoint in sorted(endpoints):
            path = self._policy.path(user_id, endpoint)
            limits = ledger.limits(path)
            for limit in limits:
                if limit.window.kind != "lifetime":
                    cleared += ledger.remove_limit(path, limit.dimension, limit.window)
            if limits:
                ledger.set_limits(path, *limits)
        return cleared

    def cleanup_expired(self) -> int:
        """Forget keys whose windows are all empty (never a live window); returns how many."""
        forgotten = self._limiter.cleanup_idle()
        with self._lock:
            known = set(self._limiter._core.keys)
            for user, endpoints in list(self._seen.items()):
                endpoints.intersection_update(
                    e for e in endpoints if self._policy.path(user, e) in known
                )
                if not endpoints:
                    del self._seen[user]
        return forgotten

    # -- internals ------------------------------------------------------------------------------

    def _key(self, user_id: str, endpoint: str) -> str:
        path = self._limiter.key(user_id, endpoint)
        with self._lock:
            self._seen.setdefault(user_id, set()).add(endpoint)
        return path

    def _refused(
        self,
        user_id: str,
        endpoint: str,
        window: Window | None,
        current: object,
        limit: object,
        retry_after: float | None,
    ) -> RateLimitResult:
        result = RateLimitResult(
            exceeded=True,
            limit_type=limit_type(window),
            current=_as_int(current),
            limit=_as_int(limit),
            retry_after=retry_after,
        )
        if self._logger is not None:
            self._logger.warning(
                "rate_limit_exceeded user=%s endpoint=%s type=%s",
                user_id,
                endpoint,
                result.limit_type,
                extra={
                    "user_id": user_id,
                    "endpoint": endpoint,
                    "limit_type": result.limit_type,
                    "current": result.current,
                    "limit": result.limit,
                    "retry_after": retry_after,
                },
            )
        return result


def _check_config(config: object) -> None:
    if not isinstance(config, RateLimitConfig):
        raise InvalidInput("config", config, "expected a RateLimitConfig")


def _as_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


__all__ = ["RateLimitConfig", "RateLimitResult", "RateLimiter", "limit_type"]
