"""Micro-benchmarks (pytest-benchmark), kept out of the default test run: `make bench`.

On the default target (SmolLM2-135M) and its pruned draft, CPU-sized:
- the distillation loss: the eager reference on materialized logits against the chunked
  fused-linear path that never builds [N, V] (value and gradient);
- one decode step of each runner: a one-token draft step and a 5-token verification,
  on the generic Hugging Face runner and the lean Llama runner;
- one training step (`TrainLoop.step`, batch 2 x 128, bf16 autocast).

    make bench            # or: pytest bench/micro --benchmark-json FILE
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from accelerate import Accelerator
from specdistill.serve.llama_fast import LlamaRunner
from specdistill.serve.runners import HFRunner

from specdistill.data.batches import TokenRows
from specdistill.losses import compute_linear_distill_loss, distill_loss
from specdistill.models import load_target, prune_draft
from specdistill.training.config import TrainConfig
from specdistill.training.loop import TrainLoop
from specdistill.training.onpolicy import OnPolicyBatches
from specdistill.training.step import Student
from specdistill.training.trainer import trainable_parameters

ROWS = 256  # positions in the loss benchmarks


@pytest.fixture(scope="module")
def models():
    target, tokenizer = load_target()
    return target.eval(), prune_draft(target, [0, 1, 2, -1]).eval(), tokenizer


@pytest.fixture(scope="module")
def loss_inputs(models):
    target, draft, _ = models
    torch.manual_seed(0)
    ids = torch.randint(0, 49152, (1, ROWS))
    with torch.no_grad():
        teacher_hidden = target.model(input_ids=ids).last_hidden_state[0]
        student_hidden = draft.model(input_ids=ids).last_hidden_state[0]
    return student_hidden, draft.lm_head.weight, teacher_hidden, target.lm_head.weight


@pytest.mark.benchmark(group="loss (256 positions, V = 49152, value + gradient)")
def test_loss_reference_on_logits(benchmark, loss_inputs):
    student_hidden, student_weight, teacher_hidden, teacher_weight = loss_inputs

    def run():
        hidden = student_hidden.detach().requires_grad_()
        loss = distill_loss(hidden @ student_weight.T, teacher_hidden @ teacher_weight.T)
        loss.backward()

    benchmark(run)


@pytest.mark.benchmark(group="loss (256 positions, V = 49152, value + gradient)")
def test_loss_chunked_fused_linear(benchmark, loss_inputs):
    student_hidden, student_weight, teacher_hidden, teacher_weight = loss_inputs

    def run():
        hidden = student_hidden.detach().requires_grad_()
        loss = compute_linear_distill_loss(hidden, student_weight, teacher_hidden=teacher_hidden,
                                           teacher_weight=teacher_weight)
        loss.backward()

    benchmark(run)


@pytest.mark.parametrize("runner_cls", [HFRunner, LlamaRunner], ids=["hf", "lean"])
@pytest.mark.parametrize("role,tokens", [("draft step", 1), ("verify k=4", 5)])
@pytest.mark.benchmark(group="decode step (prompt of 128 tokens, batch 1)")
def test_runner_step(benchmark, models, runner_cls, role, tokens):
    target, draft, _ = models
    model = draft if role == "draft step" else target
    runner = runner_cls(model)
    state = runner.start(1, 512)
    with torch.inference_mode():
        runner.forward(state, torch.randint(0, 49152, (1, 128)), [127])
    step_ids = torch.randint(0, 49152, (1, tokens))

    def run():
        with torch.inference_mode():
            runner.forward(state, step_ids, None)
            runner.rollback(state, [128])

    benchmark(run)


@pytest.mark.benchmark(group="training step (batch 2 x 128, bf16 autocast)")
def test_training_step(benchmark, models):
    target, _, tokenizer = models
    draft = prune_draft(target, [0, 1, 2, -1]).float().train()
    config = TrainConfig(batch_size=2, seq_len=128, report_to="none", output_dir=tempfile.mkdtemp())
    accelerator = Accelerator(cpu=True)
    rows = TokenRows.from_chunks(torch.randint(0, 49152, (8, 128)))
    params = trainable_parameters(draft, False)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loop = TrainLoop(config, accelerator, target, Student(draft, hidden=True), draft, tokenizer, rows, optimizer,
                     scheduler, params, OnPolicyBatches([], 0.0, 1.0, 1, 128, 0, 0), [])
    steps = iter(range(10**6))
    benchmark(lambda: loop.step(next(steps)))
