"""``ResourceTracker``: per-process quotas and usage, kept in a budgeteer ``Ledger``.

A drop-in for the control-tower ``ResourceTracker`` (its "cgroups equivalent"): the same classes,
methods, defaults and reason strings, so code written against that module keeps working. The
difference is where the numbers live. Each process id ``pid`` is the ledger scope
``f"{scope_prefix}/process:{pid}"``; its quota becomes lifetime ``Limit``s on that scope and its
usage is recorded with ``Ledger.charge``. Two trackers on one store (say the same SQLite file)
therefore see the same usage, and a ``Guard`` or any other ledger client can reserve against the
same limits.

Quota fields map to ledger dimensions as follows (usage fields in brackets)::

    max_llm_calls      -> requests       (llm_calls)
    max_tool_calls     -> tool_calls     (tool_calls)
    max_agent_hops     -> agent_hops     (agent_hops)
    max_iterations     -> iterations     (iterations)
    max_input_tokens   -> input_tokens   (tokens_in)
    max_output_tokens  -> output_tokens  (tokens_out)

``max_context_tokens`` (a per-call size), the two timeouts and ``rate_limit`` have no ledger
counterpart and stay in the tracker.

Deliberate differences from the original, each documented where it applies:

* A limit counts as *hit* when usage reaches it (``usage >= max``): the next call would cross
  it. ``check_quota``, ``ResourceUsage.exceeds_quota`` and ``ResourceQuota.is_within_bounds``
  all use this one rule (the original mixed ``>`` and ``<=``).
* ``record_usage`` takes an extra keyword ``iterations`` so ``max_iterations`` can be reached.
* Elapsed time is read live from the ledger's clock by every call, so a timeout shows up in
  ``check_quota`` without a prior ``update_elapsed_time``. Each tracker measures it from the
  moment *it* began tracking the pid.
* ``get_usage`` and ``get_quota`` return snapshots; change a quota with ``adjust_quota``.
* ``adjust_quota`` refuses unknown fields and bad values with ``InvalidInput`` (the original
  ignored them), and bad pids raise ``InvalidInput`` naming ``"pid"``.
* Usage is an append-only ledger record: ``release`` forgets the pid and removes its limits, but
  its usage stays in the ledger, and a pid allocated again resumes its totals. Use fresh pids.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

from budgeteer._clock import Clock
from budgeteer.errors import InvalidInput
from budgeteer.ledger import Ledger
from budgeteer.model import MAX_UNITS, Limit, LimitHeadroom, Usage, parse_path

__all__ = [
    "LoggerProtocol",
    "ResourceQuota",
    "ResourceTracker",
    "ResourceTrackerProtocol",
    "ResourceUsage",
]

WARN_FRACTION = (4, 5)
"""Usage at or above this fraction (4/5 = 80%) of a limit logs a warning; integers, no floats."""

_LIMITED: tuple[tuple[str, str, str], ...] = (
    # (ResourceQuota field, ledger dimension, ResourceUsage field)
    ("max_llm_calls", "requests", "llm_calls"),
    ("max_tool_calls", "tool_calls", "tool_calls"),
    ("max_agent_hops", "agent_hops", "agent_hops"),
    ("max_iterations", "iterations", "iterations"),
    ("max_input_tokens", "input_tokens", "tokens_in"),
    ("max_output_tokens", "output_tokens", "tokens_out"),
)
_QUOTA_FIELD_OF_DIMENSION = {dimension: quota for quota, dimension, _ in _LIMITED}
_COUNT_FIELDS = (
    "max_input_tokens",
    "max_output_tokens",
    "max_context_tokens",
    "max_llm_calls",
    "max_tool_calls",
    "max_agent_hops",
    "max_iterations",
)
_TIME_FIELDS = ("timeout_seconds", "soft_timeout_seconds")
_PID_RULE = (
    "expected a str of letters, digits and ._@+=-, starting with a letter or digit, "
    "at most 128 characters"
)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UNITS:
        raise InvalidInput(name, value, f"expected a whole number in 0..{MAX_UNITS}")
    return value


# --------------------------------------------------------------------------------------------
# Quota and usage


@dataclass
class ResourceQuota:
    """The limits of one process. Every cap is reached when usage *equals* it.

    Raises:
        InvalidInput: a count is not a whole number >= 0, or a timeout is not a finite number
            of seconds >= 0 (the error names the field).
    """

    max_input_tokens: int = 4096
    """Input (prompt) tokens over the process's life; ledger dimension ``input_tokens``."""
    max_output_tokens: int = 2048
    """Output (completion) tokens over the process's life; ledger dimension ``output_tokens``."""
    max_context_tokens: int = 16384
    """The largest context one call may use; kept for callers, not enforced by the tracker."""
    max_llm_calls: int = 10
    """Model calls; ledger dimension ``requests``."""
    max_tool_calls: int = 50
    """Tool invocations; ledger dimension ``tool_calls``."""
    max_agent_hops: int = 21
    """Hand-offs to another agent; ledger dimension ``agent_hops``."""
    max_iterations: int = 3
    """Agent loop iterations; ledger dimension ``iterations``."""
    timeout_seconds: float = 300
    """Hard wall-clock limit, from when the tracker began tracking the process."""
    soft_timeout_seconds: float = 240
    """Past this, ``record_usage`` logs a warning ahead of the hard timeout."""
    rate_limit: object | None = None
    """Per-user rate limit configuration; carried, not enforced yet."""

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            _check_count(name, getattr(self, name))
        for name in _TIME_FIELDS:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidInput(name, value, "expected a finite number of seconds >= 0")

    def is_within_bounds(
        self,
        llm_calls: int,
        tool_calls: int,
        agent_hops: int,
        iterations: int,
    ) -> bool:
        """Whether another call is allowed: every count is still *below* its cap.

        Args:
            llm_calls: model calls made so far.
            tool_calls: tool calls made so far.
            agent_hops: agent hops made so far.
            iterations: loop iterations made so far.

        Returns:
            ``False`` as soon as one count has reached its maximum (``count >= max``), the same
            rule as ``ResourceUsage.exceeds_quota``.
        """
        return (
            llm_calls < self.max_llm_calls
            and tool_calls < self.max_tool_calls
            and agent_hops < self.max_agent_hops
            and iterations < self.max_iterations
        )


@dataclass
class ResourceUsage:
    """What one process has used: a snapshot read from the ledger."""

    llm_calls: int = 0
    """Model calls (ledger ``requests``)."""
    tool_calls: int = 0
    """Tool invocations."""
    agent_hops: int = 0
    """Hand-offs to another agent."""
    iterations: int = 0
    """Agent loop iterations."""
    tokens_in: int = 0
    """Input tokens (ledger ``input_tokens``)."""
    tokens_out: int = 0
    """Output tokens (ledger ``output_tokens``)."""
    elapsed_seconds: float = 0.0
    """Seconds since the tracker began tracking the process (ledger clock)."""

    def exceeds_quota(self, quota: ResourceQuota) -> str | None:
        """The first limit of ``quota`` this usage has hit, or ``None``.

        A limit counts as hit when usage *reaches* it (``usage >= max``): the next call would
        cross it. Checked in this order: LLM calls, tool calls, agent hops, iterations, time.

        Args:
            quota: the limits to compare against.

        Returns:
            ``None`` if within quota, else ``"max_llm_calls_exceeded"``,
            ``"max_tool_calls_exceeded"``, ``"max_agent_hops_exceeded"``,
            ``"max_iterations_exceeded"`` or ``"timeout_exceeded"``.
        """
        if self.llm_calls >= quota.max_llm_calls:
            return "max_llm_calls_exceeded"
        if self.tool_calls >= quota.max_tool_calls:
            return "max_tool_calls_exceeded"
        if self.agent_hops >= quota.max_agent_hops:
            return "max_agent_hops_exceeded"
        if self.iterations >= quota.max_iterations:
            return "max_iterations_exceeded"
        if self.elapsed_seconds >= quota.timeout_seconds:
            return "timeout_exceeded"
        return None


# --------------------------------------------------------------------------------------------
# Protocols


class LoggerProtocol(Protocol):
    """What the tracker logs to: ``logging.Logger``, a structlog logger, or a test fake.

    Calls pass the event name (with ``%s`` arguments for readable stdlib output) and the same
    facts as a mapping in ``extra``, which tests and structured loggers read.
    """

    def warning(
        self, msg: str, /, *args: object, extra: Mapping[str, object] | None = None
    ) -> None:
        """Log a warning."""

    def info(self, msg: str, /, *args: object, extra: Mapping[str, object] | None = None) -> None:
        """Log an informational event."""


@runtime_checkable
class ResourceTrackerProtocol(Protocol):
    """The interface a kernel uses to allocate quotas and record usage per process."""

    def allocate(self, pid: str, quota: ResourceQuota) -> bool:
        """Allocate ``quota`` to ``pid``; ``False`` if already allocated."""
        ...

    def release(self, pid: str) -> bool:
        """Stop tracking ``pid``; ``False`` if it was not tracked."""
        ...

    def record_usage(
        self,
        pid: str,
        llm_calls: int = 0,
        tool_calls: int = 0,
        agent_hops: int = 0,
        tokens_in: int = 0,
        tokens_out: int = 0,
    ) -> ResourceUsage:
        """Add usage to ``pid`` and return its new totals."""
        ...

    def check_quota(self, pid: str) -> str | None:
        """``None`` if ``pid`` is within quota, else the reason string."""
        ...

    def get_usage(self, pid: str) -> ResourceUsage | None:
        """``pid``'s usage, or ``None`` if not tracked."""
        ...

    def get_quota(self, pid: str) -> ResourceQuota | None:
        """``pid``'s quota, or ``None`` if not tracked."""
        ...

    def get_system_usage(self) -> dict[str, int]:
        """System-wide counters."""
        ...


# --------------------------------------------------------------------------------------------
# The tracker


@dataclass
class _Process:
    """What the ledger cannot hold about a pid."""

    quota: ResourceQuota
    """The last quota seen; ledger limits override the fields they cover."""
    started_at: float
    """Ledger ``clock.monotonic()`` when this tracker began tracking the pid."""


class ResourceTracker:
    """Per-process quotas and usage, stored in a budgeteer ``Ledger``. Thread-safe.

    Example::

        tracker = ResourceTracker(ledger=Ledger("sqlite:///budget.db"))
        tracker.allocate("env-123", ResourceQuota(max_llm_calls=10))
        tracker.record_usage("env-123", llm_calls=1, tokens_in=500, tokens_out=200)
        if (reason := tracker.check_quota("env-123")) is not None:
            stop(reason)

    Args:
        logger: anything with ``warning`` and ``info`` methods (see ``LoggerProtocol``);
            ``None`` logs to ``logging.getLogger("budgeteer.tracker")``.
        default_quota: the quota of pids that ``record_usage`` starts tracking by itself
            (a fresh ``ResourceQuota()`` if omitted).
        ledger: where usage and limits live; a private ``Ledger("memory://")`` if omitted.
        scope_prefix: the scope path under which each pid gets ``process:<pid>``.
        clock: the clock of the private ledger; refused together with ``ledger`` (pass the
            clock to that ``Ledger``), since all time comes from the ledger's clock.

    Raises:
        InvalidInput: a bad ``scope_prefix``, ``default_quota`` or ``clock``.
    """

    def __init__(
        self,
        logger: LoggerProtocol | None = None,
        default_quota: ResourceQuota | None = None,
        *,
        ledger: Ledger | None = None,
        scope_prefix: str = "tracker:default",
        clock: Clock | None = None,
    ) -> None:
        try:
            parse_path(f"{scope_prefix}/process:pid")
        except InvalidInput:
            raise InvalidInput(
                "scope_prefix", scope_prefix, "expected a scope path such as 'tracker:default'"
            ) from None
        if default_quota is not None and not isinstance(default_quota, ResourceQuota):
            raise InvalidInput("default_quota", default_quota, "expected a ResourceQuota")
        if ledger is not None and clock is not None and clock is not ledger.clock:
            raise InvalidInput(
                "clock", clock, "time comes from the ledger's clock; pass the clock to the Ledger"
            )
        self._ledger = ledger if ledger is not None else Ledger("memory://", clock=clock)
        self._prefix = scope_prefix
        self._logger: LoggerProtocol = (
            logger if logger is not None else logging.getLogger("budgeteer.tracker")
        )
        self._default_quota = replace(default_quota) if default_quota else ResourceQuota()
        self._processes: dict[str, _Process] = {}
        self._total_processes = 0
        self._lock = threading.RLock()

    @property
    def ledger(self) -> Ledger:
        """The ledger holding usage and limits."""
        return self._ledger

    @property
    def scope_prefix(self) -> str:
        """The scope path under which every pid gets its own ``process:<pid>`` scope."""
        return self._prefix

    def scope_for(self, pid: str) -> str:
        """The ledger scope of ``pid``, e.g. ``"tracker:default/process:env-123"``.

        Raises:
            InvalidInput: ``pid`` cannot be a scope name (field ``"pid"``).
        """
        if not isinstance(pid, str) or "/" in pid:
            raise InvalidInput("pid", pid, _PID_RULE)
        try:
            parse_path(f"process:{pid}")
        except InvalidInput:
            raise InvalidInput("pid", pid, _PID_RULE) from None
        return f"{self._prefix}/process:{pid}"

    # -- quota management ---------------------------------------------------------------------

    def allocate(self, pid: str, quota: ResourceQuota) -> bool:
        """Start tracking ``pid`` with ``quota``, written to the ledger as its limits.

        The tracker keeps its own copy of ``quota``, so one object can serve many pids.

        Args:
            pid: the process id.
            quota: its limits.

        Returns:
            ``True`` if allocated, ``False`` if this tracker already tracks ``pid`` (nothing
            changed; a warning is logged).

        Raises:
            InvalidInput: a bad ``pid`` or ``quota``.
        """
        scope = self.scope_for(pid)
        if not isinstance(quota, ResourceQuota):
            raise InvalidInput("quota", quota, "expected a ResourceQuota")
        own = replace(quota)  # validates again, in case the caller mutated it
        with self._lock:
            if pid in self._processes:
                self._logger.warning("duplicate_allocation pid=%s", pid, extra={"pid": pid})
                return False
            self._ledger.set_limits(scope, *_limits(own))
            self._register(pid, own)
            return True

    def release(self, pid: str) -> bool:
        """Stop tracking ``pid`` and remove its limits from the ledger.

        Its recorded usage stays in the ledger (and in ``get_system_usage``); allocating the
        same pid again resumes those totals.

        Returns:
            ``True`` if ``pid`` was tracked, else ``False``.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        scope = self.scope_for(pid)
        with self._lock:
            if pid not in self._processes:
                return False
            for _, dimension, _ in _LIMITED:
                self._ledger.remove_limit(scope, dimension)
            del self._processes[pid]
            return True

    def get_quota(self, pid: str) -> ResourceQuota | None:
        """A copy of ``pid``'s quota, with the ledger's current limits, or ``None``.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        scope = self.scope_for(pid)
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                return None
            return replace(self._sync_quota(process, self._ledger.limits(scope)))

    def adjust_quota(self, pid: str, **adjustments: int) -> bool:
        """Change some of a running process's limits, e.g. ``max_llm_calls=20``.

        Only the named fields change, in the tracker and in the ledger; limits another tracker
        set on the same scope are left alone.

        Args:
            pid: the process id.
            **adjustments: ``ResourceQuota`` field names and their new values.

        Returns:
            ``True`` if adjusted, ``False`` if ``pid`` is not tracked.

        Raises:
            InvalidInput: a bad ``pid``, an unknown field or a bad value (nothing changed).
        """
        scope = self.scope_for(pid)
        known = {f.name for f in fields(ResourceQuota)}
        for name, value in adjustments.items():
            if name not in known:
                raise InvalidInput(name, value, f"not a ResourceQuota field; use one of {known}")
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                return False
            adjusted = replace(process.quota, **adjustments)
            changed = [
                Limit(dimension, getattr(adjusted, name))
                for name, dimension, _ in _LIMITED
                if name in adjustments
            ]
            if changed:
                self._ledger.set_limits(scope, *changed)
            process.quota = adjusted
            self._logger.info(
                "quota_adjusted pid=%s %s", pid, adjustments, extra={"pid": pid, **adjustments}
            )
            return True

    # -- usage --------------------------------------------------------------------------------

    def record_usage(
        self,
        pid: str,
        llm_calls: int = 0,
        tool_calls: int = 0,
        agent_hops: int = 0,
        tokens_in: int = 0,
        tokens_out: int = 0,
        *,
        iterations: int = 0,
    ) -> ResourceUsage:
        """Record usage that already happened and return ``pid``'s new totals.

        The usage is charged to the ledger without admission, like the original: it counts even
        past a limit (``check_quota`` then reports it). A pid not yet tracked starts being
        tracked with the default quota, or with the limits the ledger already holds for it
        (set by another tracker on the same store). A warning is logged for each dimension
        charged here whose usage reaches 80% of its limit, and once elapsed time passes
        ``soft_timeout_seconds``.

        Args:
            pid: the process id.
            llm_calls: model calls to add.
            tool_calls: tool calls to add.
            agent_hops: agent hops to add.
            tokens_in: input tokens to add.
            tokens_out: output tokens to add.
            iterations: loop iterations to add (an extension: the original had no way to
                count them).

        Returns:
            The totals after this call, as recorded in the ledger (they include usage other
            trackers sharing the store recorded for ``pid``).

        Raises:
            InvalidInput: a bad ``pid`` or a count that is not a whole number >= 0 (nothing
                was recorded).
        """
        scope = self.scope_for(pid)
        added = {
            "llm_calls": _check_count("llm_calls", llm_calls),
            "tool_calls": _check_count("tool_calls", tool_calls),
            "agent_hops": _check_count("agent_hops", agent_hops),
            "iterations": _check_count("iterations", iterations),
            "tokens_in": _check_count("tokens_in", tokens_in),
            "tokens_out": _check_count("tokens_out", tokens_out),
        }
        usage = Usage(
            requests=llm_calls,
            tool_calls=tool_calls,
            agent_hops=agent_hops,
            iterations=iterations,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
        )
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                process = self._adopt(pid, scope)
            if usage.units:
                # Cost stays unknown (None): the tracker counts calls, it does not price them.
                self._ledger.charge(scope, usage)
            current, quota = self._snapshot(scope, process)
            self._warn_if_near(pid, current, quota, [k for k, v in added.items() if v])
            return current

    def get_usage(self, pid: str) -> ResourceUsage | None:
        """A snapshot of ``pid``'s usage, or ``None`` if not tracked.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        scope = self.scope_for(pid)
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                return None
            return self._snapshot(scope, process)[0]

    def get_all_usage(self) -> dict[str, ResourceUsage]:
        """Snapshots of the usage of every pid this tracker tracks."""
        with self._lock:
            return {
                pid: self._snapshot(self.scope_for(pid), process)[0]
                for pid, process in self._processes.items()
            }

    def update_elapsed_time(self, pid: str) -> float | None:
        """Seconds since tracking of ``pid`` began, or ``None`` if not tracked.

        Kept for compatibility: every other method already reads the time afresh.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        self.scope_for(pid)
        with self._lock:
            process = self._processes.get(pid)
            return None if process is None else self._elapsed(process)

    # -- enforcement --------------------------------------------------------------------------

    def check_quota(self, pid: str) -> str | None:
        """Whether ``pid`` may go on: ``None``, or the first limit it has hit.

        A limit counts as hit when usage *reaches* it (``usage >= max``), i.e. the next call
        would exceed it; the timeout is hit once elapsed seconds reach ``timeout_seconds``.

        Returns:
            ``None`` if within quota or not tracked, else ``"max_llm_calls_exceeded"``,
            ``"max_tool_calls_exceeded"``, ``"max_agent_hops_exceeded"``,
            ``"max_iterations_exceeded"`` or ``"timeout_exceeded"``.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        scope = self.scope_for(pid)
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                return None  # no tracking, no limits (as the original)
            usage, quota = self._snapshot(scope, process)
            return usage.exceeds_quota(quota)

    def get_remaining_budget(self, pid: str) -> dict[str, float] | None:
        """What ``pid`` may still use, never below zero, or ``None`` if not tracked.

        Returns:
            ``{"llm_calls", "tool_calls", "agent_hops", "iterations"}`` as ints and
            ``"time_seconds"`` as a float.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        scope = self.scope_for(pid)
        with self._lock:
            process = self._processes.get(pid)
            if process is None:
                return None
            usage, quota = self._snapshot(scope, process)
            return {
                "llm_calls": max(0, quota.max_llm_calls - usage.llm_calls),
                "tool_calls": max(0, quota.max_tool_calls - usage.tool_calls),
                "agent_hops": max(0, quota.max_agent_hops - usage.agent_hops),
                "iterations": max(0, quota.max_iterations - usage.iterations),
                "time_seconds": max(0.0, quota.timeout_seconds - usage.elapsed_seconds),
            }

    # -- system -------------------------------------------------------------------------------

    def get_system_usage(self) -> dict[str, int]:
        """System-wide counters.

        ``total_processes`` (ever tracked) and ``active_processes`` (tracked now) count this
        tracker's pids. The ``system_*`` sums come from the ledger's ``scope_prefix`` scope, so
        they include released pids and every tracker sharing the store and prefix.
        """
        with self._lock:
            used = self._ledger.usage(self._prefix).used
            return {
                "total_processes": self._total_processes,
                "active_processes": len(self._processes),
                "system_llm_calls": int(used.requests),
                "system_tool_calls": int(used.tool_calls),
                "system_tokens_in": int(used.input_tokens),
                "system_tokens_out": int(used.output_tokens),
            }

    def is_tracked(self, pid: str) -> bool:
        """Whether this tracker tracks ``pid``.

        Raises:
            InvalidInput: a bad ``pid``.
        """
        self.scope_for(pid)
        with self._lock:
            return pid in self._processes

    def __repr__(self) -> str:
        return f"ResourceTracker({self._ledger!r}, scope_prefix={self._prefix!r})"

    # -- internals ----------------------------------------------------------------------------

    def _register(self, pid: str, quota: ResourceQuota) -> _Process:
        process = _Process(quota, self._ledger.clock.monotonic())
        self._processes[pid] = process
        self._total_processes += 1
        return process

    def _adopt(self, pid: str, scope: str) -> _Process:
        # Another tracker on the same store may have allocated this pid: keep its limits rather
        # than overwrite them with our default, and add only the ones missing.
        existing = self._ledger.limits(scope)
        present = {limit.dimension for limit in existing if limit.window.kind == "lifetime"}
        quota = _merge(self._default_quota, existing)
        missing = [limit for limit in _limits(quota) if limit.dimension not in present]
        if missing:
            self._ledger.set_limits(scope, *missing)
        return self._register(pid, quota)

    def _sync_quota(
        self, process: _Process, limits: Iterable[Limit | LimitHeadroom]
    ) -> ResourceQuota:
        # The ledger is the truth for the fields it holds (another tracker may have adjusted
        # them); remember what we saw, so a removed limit falls back to the latest value.
        process.quota = _merge(process.quota, limits)
        return process.quota

    def _snapshot(self, scope: str, process: _Process) -> tuple[ResourceUsage, ResourceQuota]:
        meters = self._ledger.usage(scope)  # one read: lifetime totals and the scope's limits
        quota = self._sync_quota(process, meters.limits)
        used = meters.used
        usage = ResourceUsage(
            llm_calls=int(used.requests),
            tool_calls=int(used.tool_calls),
            agent_hops=int(used.agent_hops),
            iterations=int(used.iterations),
            tokens_in=int(used.input_tokens),
            tokens_out=int(used.output_tokens),
            elapsed_seconds=self._elapsed(process),
        )
        return usage, quota

    def _elapsed(self, process: _Process) -> float:
        return max(0.0, self._ledger.clock.monotonic() - process.started_at)

    def _warn_if_near(
        self, pid: str, usage: ResourceUsage, quota: ResourceQuota, charged: list[str]
    ) -> None:
        numerator, denominator = WARN_FRACTION
        for quota_field, _, usage_field in _LIMITED:
            if usage_field not in charged:
                continue
            used, limit = getattr(usage, usage_field), getattr(quota, quota_field)
            if used * denominator >= limit * numerator:
                self._logger.warning(
                    "approaching_limit pid=%s %s=%s of %s",
                    pid,
                    usage_field,
                    used,
                    limit,
                    extra={"pid": pid, "resource": usage_field, "used": used, "limit": limit},
                )
        if usage.elapsed_seconds >= quota.soft_timeout_seconds:
            self._logger.warning(
                "approaching_timeout pid=%s elapsed=%.3fs of %ss",
                pid,
                usage.elapsed_seconds,
                quota.timeout_seconds,
                extra={
                    "pid": pid,
                    "resource": "time_seconds",
                    "elapsed_seconds": usage.elapsed_seconds,
                    "soft_timeout_seconds": quota.soft_timeout_seconds,
                    "timeout_seconds": quota.timeout_seconds,
                },
            )


def _limits(quota: ResourceQuota) -> list[Limit]:
    return [Limit(dimension, getattr(quota, name)) for name, dimension, _ in _LIMITED]


def _merge(quota: ResourceQuota, limits: Iterable[Limit | LimitHeadroom]) -> ResourceQuota:
    changes: dict[str, int] = {}
    for limit in limits:
        name = _QUOTA_FIELD_OF_DIMENSION.get(limit.dimension)
        if name is not None and limit.window.kind == "lifetime":
            value = limit.max if isinstance(limit, Limit) else limit.limit
            changes[name] = int(value)
    if all(getattr(quota, name) == value for name, value in changes.items()):
        return quota
    return replace(quota, **changes)
