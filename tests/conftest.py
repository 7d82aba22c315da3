"""Shared test helpers.

Real data samples live outside the repository, in ``../shared/data`` (next to the clone), or
wherever ``MASKFORMER_SHARED_DATA`` points. Tests that need them use the ``shared_data``
fixture, which skips with a clear reason when the folder is absent (a user's clone has none).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # flat modules: `import maskformer` from the repo root

SHARED_DATA = Path(os.environ.get("MASKFORMER_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA} (set MASKFORMER_SHARED_DATA)")
    return SHARED_DATA
