import pytest
import torch

from specdistill.models import tiny_pair


@pytest.fixture(scope="session")
def tiny_models():
    """A tiny random (target, draft) pair sharing a 64-token vocabulary."""
    return tiny_pair(vocab_size=64, seed=0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
