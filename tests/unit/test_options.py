"""A model's engine options (llmd/models/options.py): the automatic thread counts."""

from __future__ import annotations

import pytest

from llmd.models import auto_threads


@pytest.mark.parametrize(("cores", "expected"), [(1, (1, 1)), (2, (1, 2)), (8, (7, 8))])
def test_auto_threads_leave_a_core_for_http(cores: int, expected: tuple[int, int]) -> None:
    assert auto_threads(cores) == expected
