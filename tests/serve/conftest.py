"""Fixtures the engine's tests share: the sharpened tiny target and a random EAGLE-3 head for it."""

import pytest
from serve_helpers import sharp_tiny_target, tiny_head


@pytest.fixture(scope="module")
def target():
    return sharp_tiny_target()


@pytest.fixture(scope="module")
def head(target):
    return tiny_head(target)
