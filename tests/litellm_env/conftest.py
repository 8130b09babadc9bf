"""LiteLLM tests run offline: LiteLLM must read its bundled model map, not fetch one.

Without this, importing litellm tries to download its cost map and retries for seconds before
falling back. It is set before any test module imports litellm.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

if importlib.util.find_spec("litellm") is None:
    # The main environment has no LiteLLM (its openai pin conflicts with openai-agents):
    # these tests run in .venv-litellm (`make unit-litellm`).
    collect_ignore_glob = ["test_*.py"]
