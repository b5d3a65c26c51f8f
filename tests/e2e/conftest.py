"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import pytest
from bad_input_kit import Parts, build_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Parts:
    return build_parts(tmp_path_factory)
