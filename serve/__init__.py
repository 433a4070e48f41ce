"""Speculative decoding engine (installed as ``specdistill.serve``)."""

from specdistill.serve.generator import GenerationOutput, SpeculativeGenerator
from specdistill.serve.sampling import SamplingParams
from specdistill.serve.stats import SpecStats

__all__ = ["GenerationOutput", "SamplingParams", "SpecStats", "SpeculativeGenerator"]
