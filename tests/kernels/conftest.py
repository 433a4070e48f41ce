"""Kernel tests run everywhere: on CUDA when present, else through Triton's CPU interpreter.

TRITON_INTERPRET must be set before ``specdistill.kernels``' modules define their
``@triton.jit`` kernels (on first use), so it is set here, at collection time."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # The interpreter evaluates both sides of tl.where with numpy, including the -inf - -inf
    # of padded lanes that the kernels deliberately discard.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
