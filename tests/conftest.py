"""Test setup. The Triton interpreter must be chosen before any @triton.jit function is defined."""
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # shared test helpers (search_fixtures, models)
