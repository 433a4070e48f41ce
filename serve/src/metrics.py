"""Prometheus metrics of the server, with vLLM's names under our own prefix.

Speculative decoding (read from the engine's raw counts at scrape time, as vLLM's
counters are defined): ``…:spec_decode_num_drafts`` (steps that drafted),
``…_num_draft_tokens``, ``…_num_accepted_tokens`` and ``…_num_accepted_tokens_per_pos``
(label ``position``). Acceptance rate = accepted / draft tokens; mean acceptance
length = 1 + accepted / drafts. The same three ``…_by_draft`` per draft version (labels ``draft``,
``draft_version``; ``POST /admin/draft`` adds versions), and ``…:draft_info`` names the serving one.
Also queue depth, running rows, request counts,
tokens, time to first token and inter-token latency; with ``--capture``, the target states waiting
for the capture's writer (bytes) and the records queued without theirs (``capture.py``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIX = "specdistill"
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    def __init__(self, engine, model_name: str, capture=None):
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        self._labels = labels
        registry, p = self.registry, PREFIX
        self.requests = Counter(f"{p}:request_success", "Finished requests by finish reason",
                                ["model_name", "finished_reason"], registry=registry)
        self.errors = Counter(f"{p}:request_errors", "Requests answered with an error, by HTTP status",
                              ["model_name", "status"], registry=registry)
        self.prompt_tokens = Counter(f"{p}:prompt_tokens", "Prompt tokens processed", ["model_name"],
                                     registry=registry).labels(**labels)
        self.generation_tokens = Counter(f"{p}:generation_tokens", "Tokens generated", ["model_name"],
                                         registry=registry).labels(**labels)
        self.ttft = Histogram(f"{p}:time_to_first_token_seconds", "Seconds from arrival to the first token",
                              ["model_name"], buckets=LATENCY_BUCKETS, registry=registry).labels(**labels)
        self.itl = Histogram(f"{p}:inter_token_latency_seconds", "Seconds between output tokens",
                             ["model_name"], buckets=LATENCY_BUCKETS, registry=registry).labels(**labels)
        self.e2e = Histogram(f"{p}:e2e_request_latency_seconds", "Seconds from arrival to the last token",
                             ["model_name"], buckets=LATENCY_BUCKETS, registry=registry).labels(**labels)
        registry.register(_EngineCollector(engine, labels))
        if capture is not None:
            registry.register(_CaptureCollector(capture, labels))

    def finished(self, reason: str) -> None:
        self.requests.labels(finished_reason=reason, **self._labels).inc()

    def error(self, status: int) -> None:
        self.errors.labels(status=str(status), **self._labels).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    """The engine's live state and raw speculative-decoding counts, read when scraped."""

    def __init__(self, engine, labels: dict):
        self.engine, self.labels = engine, labels

    def collect(self):
        names, values = list(self.labels), list(self.labels.values())
        stats = self.engine.engine.stats
        for name, help_text, value in (
            ("num_requests_running", "Requests in the running batch", self.engine.num_running),
            ("num_requests_waiting", "Requests waiting to join the batch", self.engine.num_waiting),
        ):
            gauge = GaugeMetricFamily(f"{PREFIX}:{name}", help_text, labels=names)
            gauge.add_metric(values, value)
            yield gauge
        for name, help_text, value in (
            ("spec_decode_num_drafts", "Steps in which a request drafted at least one token", stats.drafted_steps),
            ("spec_decode_num_draft_tokens", "Draft tokens proposed", stats.proposed),
            ("spec_decode_num_accepted_tokens", "Draft tokens accepted", stats.accepted),
        ):
            counter = CounterMetricFamily(f"{PREFIX}:{name}", help_text, labels=names)
            counter.add_metric(values, value)
            yield counter
        per_position = CounterMetricFamily(f"{PREFIX}:spec_decode_num_accepted_tokens_per_pos",
                                           "Draft tokens accepted at each draft position",
                                           labels=[*names, "position"])
        for position, count in enumerate(list(stats.accepted_at)):
            per_position.add_metric([*values, str(position)], count)
        yield per_position
        yield from self._drafts(names, values)

    def _drafts(self, names: list[str], values: list[str]):
        """The serving draft (``draft_info``), and each draft version's own counts, so a swapped-in
        draft's acceptance reads apart from its predecessors'."""
        engine = self.engine.engine
        info = GaugeMetricFamily(f"{PREFIX}:draft_info", "The draft serving now (value 1), by name and version",
                                 labels=[*names, "draft", "draft_version"])
        current = engine.draft_versions[-1]
        info.add_metric([*values, current.name, str(current.version)], 1)
        yield info
        now = engine.stats.counts()
        for key, name, help_text in (("drafts", "num_drafts", "Steps that drafted, by draft version"),
                                     ("draft_tokens", "num_draft_tokens", "Draft tokens proposed, by draft version"),
                                     ("accepted", "num_accepted_tokens", "Draft tokens accepted, by draft version")):
            counter = CounterMetricFamily(f"{PREFIX}:spec_decode_{name}_by_draft", help_text,
                                          labels=[*names, "draft", "draft_version"])
            for version in engine.draft_versions:
                counter.add_metric([*values, version.name, str(version.version)], version.counts(now)[key])
            yield counter


class _CaptureCollector:
    """How far the capture's writer is behind, read when scraped."""

    def __init__(self, capture, labels: dict):
        self.capture, self.labels = capture, labels

    def collect(self):
        names, values = list(self.labels), list(self.labels.values())
        pending = GaugeMetricFamily(f"{PREFIX}:capture_pending_states_bytes",
                                    "Bytes of target states waiting for the capture's writer", labels=names)
        pending.add_metric(values, self.capture.pending_states)
        yield pending
        skipped = CounterMetricFamily(f"{PREFIX}:capture_states_skipped",
                                      "Captured records queued without their target states (the writer was behind)",
                                      labels=names)
        skipped.add_metric(values, self.capture.states_skipped)
        yield skipped
