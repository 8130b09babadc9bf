"""Budgeteer inside the agent frameworks people already run.

One module per framework, each behind an optional extra, each built on the run guard
(``budgeteer.guard``): admission *before* every model and tool call, reconciliation *after* it
with the usage the provider reported, normalised by ``budgeteer.integrations._usage``. Importing
``budgeteer`` never imports any of them.
"""

from budgeteer.integrations._usage import (
    usage_from_anthropic,
    usage_from_langchain,
    usage_from_openai,
    usage_from_pydantic_ai,
)

__all__ = [
    "usage_from_anthropic",
    "usage_from_langchain",
    "usage_from_openai",
    "usage_from_pydantic_ai",
]
