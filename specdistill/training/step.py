"""One distillation step: the teacher's and the draft's forwards and the loss over the
positions a batch counts."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from specdistill.data.batches import Batch
from specdistill.losses import compute_distill_loss, compute_linear_distill_loss, compute_sparse_distill_loss
from specdistill.models import decoder_and_head
from specdistill.models.eagle3 import Eagle3Head
from specdistill.models.loading import native_bf16
from specdistill.training.eagle3_head import head_step


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast when ``enabled`` and native on ``device``; fp32 otherwise."""
    if not enabled or not native_bf16(device):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class Student(torch.nn.Module):
    """The draft as the one module that runs (and that DDP wraps): its final hidden
    states for the fused-linear loss, or its logits."""

    def __init__(self, draft, hidden: bool):
        super().__init__()
        self.draft, self.hidden = draft, hidden

    def forward(self, input_ids):
        if self.hidden:
            return self.draft.get_decoder()(input_ids=input_ids).last_hidden_state
        return self.draft(input_ids=input_ids).logits


def distill_step(target, student: Student | torch.nn.Module, batch: Batch, config, device) -> tuple:
    """Forward both models on one (micro-)batch; returns (loss sum, acceptance sum,
    counted positions) over the positions the batch's mask counts. A batch that carries
    a cached teacher (top-k log-probs) goes through the sparse loss instead; with
    ``alpha == 0`` (black-box SFT) the loss is cross entropy on the text alone and
    the acceptance is greedy agreement with it.

    With ``fused_linear`` the loss takes both models' final hidden states and LM
    heads and works chunk by chunk, so neither [B, T, V] logits tensor exists
    (less memory, and faster on CPU too: see bench/RESULTS.md)."""
    if isinstance(getattr(student, "module", student), Eagle3Head):  # training-time test of a head
        return head_step(target, student, batch, config, autocast(device, config.bf16))
    if not isinstance(getattr(student, "module", student), Student):  # a plain draft model
        student = Student(student, config.fused_linear and fusable(target, student))
    inner = getattr(student, "module", student)  # under DDP, the Student is .module
    labels = batch.labels(hard=config.alpha < 1)
    options = dict(divergence=config.divergence, temperature=config.temperature, beta=config.beta,
                   labels=labels, alpha=config.alpha, reduction="sum", return_acceptance=True)
    if config.alpha == 0:  # black-box SFT: cross entropy on the teacher's text, no teacher distribution
        with autocast(device, config.bf16):
            logits = student(batch.input_ids)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                   reduction="sum")
        # Greedy agreement with the teacher's own tokens: the acceptance greedy decoding would see.
        acceptance = (logits.argmax(-1) == labels) & (labels != -100)
    elif batch.teacher is not None:  # a cached top-k teacher: no target forward
        logprobs, indices = batch.teacher
        with autocast(device, config.bf16):
            loss, acceptance = compute_sparse_distill_loss(student(batch.input_ids), logprobs, indices, **options)
    elif inner.hidden:
        teacher_decoder, teacher_head = decoder_and_head(target)
        with torch.no_grad(), autocast(device, config.bf16):
            teacher_hidden = teacher_decoder(input_ids=batch.input_ids).last_hidden_state
        with autocast(device, config.bf16):
            loss, acceptance = compute_linear_distill_loss(
                student(batch.input_ids), decoder_and_head(inner.draft)[1], teacher_hidden=teacher_hidden,
                teacher_weight=teacher_head, **options)
    else:
        with torch.no_grad(), autocast(device, config.bf16):
            teacher_logits = target(input_ids=batch.input_ids).logits
        with autocast(device, config.bf16):
            loss, acceptance = compute_distill_loss(student(batch.input_ids), teacher_logits, **options)
    # Acceptance is 0 at masked positions already.
    return loss, acceptance.float().sum(), int((labels != -100).sum())


def fusable(target, draft) -> bool:
    return decoder_and_head(target) is not None and decoder_and_head(draft) is not None
