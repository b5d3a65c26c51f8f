"""Shared test fixtures: the real benchmark data folder and small deterministic images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """`../shared/data` beside the checkout (CI has it too); R1V_SHARED_DATA overrides."""
    env = os.environ.get("R1V_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `vllm` need vLLM (its CPU build here): `make test-vllm` installs it and runs them; without it
    they are skipped with that reason (`make test` deselects them)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed: `make test-vllm` installs its CPU build and runs these")
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)
