"""The ledger: a sans-IO decision core (``_core``), shared validation (``_frontend``), and the
thin sync (``Ledger``) and async (``AsyncLedger``) drivers."""

from budgeteer.ledger.aio import AsyncLedger
from budgeteer.ledger.sync import Ledger

__all__ = ["AsyncLedger", "Ledger"]
