"""The examples in the rules modules' docstrings run (STYLE: seeded doctests for rules/)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["rules.load", "rules.resolve", "rules.engine", "rules.correlate", "rules.slots"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_load_examples_exist() -> None:
    result = doctest.testmod(importlib.import_module("rules.load"))
    assert result.attempted >= 3
