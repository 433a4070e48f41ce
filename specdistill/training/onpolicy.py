"""On-policy batches: the draft's own continuations of training prompts (GKD, DistillSpec).

A draft trained only on the target's text never sees its own mistakes; at serving
time it drafts from its own tokens. So a share of the steps (``onpolicy_fraction``)
trains on what the current draft writes: each row is a training prompt continued
by the draft (sampled with our engine, batched), and the teacher scores the
generated tokens only (the mask counts nothing else).

Which steps are on-policy, which prompt a row takes and its sampling seed are
functions of (seed, step, global row), so a resumed run and any number of
processes draw the same batches from the same weights.
"""

from __future__ import annotations

import random

import torch

from specdistill.data.batches import Batch
from specdistill.serve import SpeculativeGenerator


class OnPolicyBatches:
    def __init__(self, prompts: list[list[int]], fraction: float, temperature: float, max_new_tokens: int,
                 seq_len: int, pad_id: int, seed: int):
        usable = [p for p in prompts if 0 < len(p) < seq_len]
        if fraction > 0 and not usable:
            raise ValueError(f"on-policy batches need training prompts shorter than seq_len={seq_len}: use record "
                             "data (--data target, a chat or prompt/response dataset), or raise seq_len")
        self.prompts, self.fraction, self.temperature = usable, fraction, temperature
        self.max_new_tokens, self.seq_len, self.pad_id, self.seed = max_new_tokens, seq_len, pad_id, seed

    def covers(self, step: int) -> bool:
        return self.fraction > 0 and random.Random(self.seed * 1_000_003 + step).random() < self.fraction

    @torch.no_grad()
    def batch(self, draft, step: int, rows: list[int], batch_size: int, eos_ids) -> Batch:
        """Global rows ``rows`` (this process's share) of the step's on-policy batch."""
        was_training = draft.training
        draft.eval()
        try:
            # The generic runner leaves the trained parameters' storage as it is.
            engine = SpeculativeGenerator(draft, None, fast_path=False).engine(max_batch_size=len(rows))
            requests = []
            for row in rows:
                key = (self.seed * 1_000_003 + step) * batch_size + row
                prompt = self.prompts[random.Random(key).randrange(len(self.prompts))]
                budget = max(1, min(self.max_new_tokens, self.seq_len - len(prompt)))
                requests.append(engine.add(torch.tensor(prompt), budget, temperature=self.temperature,
                                           eos_token_id=list(eos_ids), seed=key))
            while engine.has_work():
                engine.step()
        finally:
            draft.train(was_training)
        device = next(draft.parameters()).device
        ids = torch.full((len(rows), self.seq_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), self.seq_len, dtype=torch.bool)
        for i, request in enumerate(requests):
            tokens = request.tokens[: self.seq_len]
            ids[i, : len(tokens)] = torch.tensor(tokens)
            # Position t predicts token t + 1: count the predictions of generated tokens only.
            mask[i, len(request.prompt) - 1: len(tokens) - 1] = True
        return Batch(ids, mask).to(device)
