"""``docs/interop.md`` is what the interop tests of this run observed (see
``tests/_interop_matrix.py``). Runs after them (file order)."""

from __future__ import annotations

import os

import pytest
from _interop_matrix import DOC, ENV, MATRIX

#: Targets whose every flow must have run in this session for the comparison to mean
#: anything (a run selecting a few tests compares nothing).
REQUIRED = ("devidp", "dot")


def test_interop_doc_matches_this_run(request: pytest.FixtureRequest) -> None:
    targets = MATRIX.targets()
    if not all(t in targets for t in REQUIRED) or request.config.getoption("keyword"):
        pytest.skip("the interop flows did not all run in this session")
    if os.environ.get(ENV):
        pytest.skip(f"{ENV} is set: docs/interop.md is written at the end of this run")
    expected = MATRIX.render()
    actual = DOC.read_text() if DOC.exists() else ""
    assert actual == expected, (
        "docs/interop.md is out of date with this run: regenerate it with "
        f"{ENV}=1 python -m pytest tests/integration"
    )
