"""Speculative decoding engine (installed as ``specdistill.serve``)."""

from specdistill.serve.async_engine import AsyncEngine, EngineError, QueueFull
from specdistill.serve.generator import GenerationOutput, SpeculativeGenerator, StreamChunk
from specdistill.serve.policy import CostAwareDraftLength, DraftLengthPolicy, FixedDraftLength, HeuristicDraftLength
from specdistill.serve.sampling import SamplingParams
from specdistill.serve.scheduler import Request, SpecEngine
from specdistill.serve.stats import SpecStats

__all__ = [
    "AsyncEngine",
    "EngineError",
    "QueueFull",
    "Request",
    "SpecEngine",
    "CostAwareDraftLength",
    "DraftLengthPolicy",
    "FixedDraftLength",
    "GenerationOutput",
    "HeuristicDraftLength",
    "SamplingParams",
    "SpecStats",
    "SpeculativeGenerator",
    "StreamChunk",
]
