"""Concurrency caps: at most N in flight per key.

A slot is a hold of one unit of a named counter (``counter:in_flight`` by default) under a
lifetime limit of N on the key's path: ``Limiter.concurrent`` takes it (with whatever else the
call acquires, all or nothing), and gives it back on exit. If the process dies inside the block,
the hold's TTL returns the slot by itself, on every backend. Nothing is ever *used* on the
counter, so the cap never fills up with history.
"""

from __future__ import annotations

from dataclasses import dataclass

from budgeteer.errors import InvalidInput
from budgeteer.model import COUNTER_PREFIX, Limit, is_counter

DEFAULT_SLOT_COUNTER = "in_flight"


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` holders of a slot of ``counter`` at once on a path."""

    limit: int
    """How many may be in flight at once."""
    counter: str = DEFAULT_SLOT_COUNTER
    """The counter's name (``counter:<name>`` in the ledger)."""

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise InvalidInput("concurrency.limit", self.limit, "expected a whole number >= 0")
        if not is_counter(self.dimension):
            raise InvalidInput(
                "concurrency.counter", self.counter, "lower-case letters, digits and _"
            )

    @property
    def dimension(self) -> str:
        """The ledger dimension of the slots."""
        return COUNTER_PREFIX + self.counter

    def to_limit(self) -> Limit:
        """The ledger ``Limit`` (a lifetime cap on held slots)."""
        return Limit(self.dimension, self.limit)


__all__ = ["DEFAULT_SLOT_COUNTER", "Concurrency"]
