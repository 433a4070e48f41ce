"""Online white-box distillation of a draft model from a frozen target.

Each step: the target runs forward under ``no_grad`` on a batch of token
chunks, the draft runs forward with gradients, and ``distill_loss`` pulls the
draft's next-token distribution towards the target's at every position.
Checkpoints (draft weights, optimizer, step) are written every ``save_every``
steps; a killed run started again with the same ``output_dir`` resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from specdistill.data import batch_at, corpus_files, split_files, token_chunks
from specdistill.losses import DIVERGENCES, compute_distill_loss, compute_linear_distill_loss
from specdistill.models import DEFAULT_TARGET, check_compatible, load_target, prune_draft, save_draft_vocab, vocab_size
from specdistill.target_data import generate_answers, sequence_chunks

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Distill a draft for a target. CLI flags are generated from these fields."""

    target: str = DEFAULT_TARGET  # the embedded default or a local HF model directory
    draft: str = ""  # a local HF draft directory; empty = prune the target
    keep_layers: str = "0,1,2,-1"  # target layers the pruned draft keeps (negative = from the end)
    output_dir: str = "runs/draft"
    corpus: str = "stdlib"  # 'stdlib' (Python source), 'target' (the target's chat answers), or a text file/folder
    generate_tokens: int = 40000  # with corpus 'target': answer tokens to generate (cached in output_dir)
    generate_temperature: float = 0.8  # with corpus 'target': sampling temperature of the answers
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 200
    max_minutes: float = 0.0  # stop earlier after this much wall time (0 = no limit)
    lr: float = 5e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    divergence: str = "fkl"  # fkl, rkl, jsd, tvd, skl
    temperature: float = 1.0
    beta: float = 0.5
    alpha: float = 1.0  # weight of the soft term; 1 - alpha goes to cross entropy on the text
    train_embeddings: bool = False  # False keeps the (tied) embeddings and LM head frozen
    bf16: bool = True  # bf16 autocast for both forwards (fast on CPUs with AMX and on GPUs)
    fused_linear: bool = True  # loss from hidden states + LM heads, chunked: no [B, T, V] logits
    save_every: int = 50
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1...

    def __post_init__(self):
        # Fail before loading anything: a typo should not cost a model load and tokenization.
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        for name in ("seq_len", "batch_size", "steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.generate_tokens < 1:
            raise ValueError(f"generate_tokens must be >= 1, got {self.generate_tokens}")
        if not self.generate_temperature >= 0:
            raise ValueError(f"generate_temperature must be >= 0 (0 = greedy), got {self.generate_temperature}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def trainable_parameters(draft, train_embeddings: bool) -> list[torch.nn.Parameter]:
    """Everything but the input embeddings and LM head, unless asked (they come
    from the target already, and the head is most of a small draft's size)."""
    frozen = set()
    if not train_embeddings:
        frozen = {id(draft.get_input_embeddings().weight), id(draft.get_output_embeddings().weight)}
    params = []
    for p in draft.parameters():
        p.requires_grad_(id(p) not in frozen)
        if p.requires_grad:
            params.append(p)
    return params


def _lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to 10% over ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def decoder_and_head(model):
    """(decoder, LM-head weight) when logits are exactly ``decoder(x) @ W.T``, else None
    (a head bias, logit soft-capping or scaling needs the plain logits path)."""
    head = model.get_output_embeddings()
    config = model.config
    plain = (
        hasattr(model, "get_decoder") and getattr(head, "bias", None) is None
        and not getattr(config, "final_logit_softcapping", None) and not getattr(config, "logit_scale", None)
    )
    return (model.get_decoder(), head.weight) if plain else None


def distill_step(target, draft, input_ids: torch.Tensor, config: TrainConfig, device) -> tuple:
    """Forward both models on one batch; returns (loss, mean expected acceptance).

    With ``fused_linear`` the loss takes both models' final hidden states and LM
    heads and works chunk by chunk, so neither [B, T, V] logits tensor exists
    (less memory, and faster on CPU too: see bench/RESULTS.md)."""
    labels = None
    if config.alpha < 1:
        labels = torch.full_like(input_ids, -100)
        labels[:, :-1] = input_ids[:, 1:]
    options = dict(divergence=config.divergence, temperature=config.temperature, beta=config.beta,
                   labels=labels, alpha=config.alpha)
    teacher_parts, student_parts = decoder_and_head(target), decoder_and_head(draft)
    if config.fused_linear and teacher_parts and student_parts:
        (teacher_decoder, teacher_head), (student_decoder, student_head) = teacher_parts, student_parts
        with torch.no_grad(), _autocast(device, config.bf16):
            teacher_hidden = teacher_decoder(input_ids=input_ids).last_hidden_state
        with _autocast(device, config.bf16):
            student_hidden = student_decoder(input_ids=input_ids).last_hidden_state
            loss, acceptance = compute_linear_distill_loss(
                student_hidden, student_head, teacher_hidden=teacher_hidden, teacher_weight=teacher_head,
                return_acceptance=True, **options)
    else:
        with torch.no_grad(), _autocast(device, config.bf16):
            teacher_logits = target(input_ids=input_ids).logits
        with _autocast(device, config.bf16):
            student_logits = draft(input_ids=input_ids).logits
        loss, acceptance = compute_distill_loss(student_logits, teacher_logits, return_acceptance=True, **options)
    # Acceptance is 0 at masked positions; average over the positions that count.
    return loss, acceptance.mean() if labels is None else acceptance[labels != -100].mean()


def save_checkpoint(path: Path, draft, tokenizer, optimizer, step: int, history: list) -> None:
    """Weights in HF format plus trainer state; written beside, then swapped in,
    so a kill during saving never corrupts the last good checkpoint (see
    ``recover_checkpoint`` for a kill between the two renames)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    recover_checkpoint(path)
    if tmp.exists():  # a half-written copy from a killed save
        _remove_tree(tmp)
    draft.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / "trainer_state.pt")
    (tmp / "history.json").write_text(json.dumps(history))
    if path.exists():
        path.rename(old)
    tmp.rename(path)  # a kill just before this leaves old (good) and tmp (complete)
    if old.exists():
        _remove_tree(old)


def recover_checkpoint(path: Path) -> None:
    """Finish a save that was killed between its two renames. ``path.old`` only exists
    once ``path.tmp`` was complete, so with ``path`` missing the newer complete copy
    is tmp, else old."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if not path.exists() and old.exists():
        if tmp.exists():
            tmp.rename(path)
            _remove_tree(old)
        else:
            old.rename(path)
    elif path.exists() and old.exists():
        _remove_tree(old)


def _remove_tree(path: Path) -> None:
    for child in path.iterdir():
        _remove_tree(child) if child.is_dir() else child.unlink()
    path.rmdir()


def _build_draft(config: TrainConfig, target, device):
    """Resume from the run's checkpoint, else the given draft, else a pruned target."""
    checkpoint = Path(config.output_dir) / "checkpoint"
    recover_checkpoint(checkpoint)
    if (checkpoint / "trainer_state.pt").exists():
        log.info("resuming from %s", checkpoint)
        return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device), checkpoint
    if config.draft:
        return AutoModelForCausalLM.from_pretrained(config.draft, dtype=torch.float32).to(device), None
    keep = [int(x) for x in config.keep_layers.split(",") if x.strip()]
    return prune_draft(target, keep).float().to(device), None


def _as_list(ids) -> list[int]:
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def corpus_chunks(config: TrainConfig, target, tokenizer, progress: bool = True) -> torch.Tensor:
    """The training chunks [N, seq_len] of ``config.corpus``."""
    if config.corpus == "target":
        sequences = generate_answers(target, tokenizer, config.generate_tokens,
                                     cache=Path(config.output_dir) / "target_answers.pt",
                                     temperature=config.generate_temperature, seed=config.seed, progress=progress)
        return sequence_chunks(sequences, config.seq_len)
    files, _ = split_files(corpus_files(config.corpus), heldout_fraction=0.05, seed=config.seed)
    return token_chunks(tokenizer, files, config.seq_len, config.steps * config.batch_size * config.seq_len,
                        progress=progress)


def train(config: TrainConfig, target=None, tokenizer=None, chunks: torch.Tensor | None = None,
          progress: bool = True) -> dict:
    """Distill a draft; returns a summary with the loss/acceptance history and the
    path of the saved draft (``output_dir/final``, a plain HF checkpoint)."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    if target is None:
        target, tokenizer = load_target(config.target)
    target = target.to(device).eval()
    if chunks is None:
        chunks = corpus_chunks(config, target, tokenizer, progress)
    draft, resumed_from = _build_draft(config, target, device)
    check_compatible(target, draft)
    draft.train()
    params = trainable_parameters(draft, config.train_embeddings)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start_step, history = 0, []
    if resumed_from is not None:
        state = torch.load(resumed_from / "trainer_state.pt", map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        history = json.loads((resumed_from / "history.json").read_text())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s + start_step, config))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    step = _run_steps(config, target, draft, tokenizer, chunks, optimizer, scheduler, params,
                      start_step, history, device, progress)
    draft.eval()
    draft.save_pretrained(out / "final")
    eos = []
    if tokenizer is not None:
        tokenizer.save_pretrained(out / "final")
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    eos += _as_list(getattr(target.generation_config, "eos_token_id", None))
    save_draft_vocab(out / "final", chunks, vocab_size(draft), eos)
    return {"steps": step, "history": history, "draft_dir": str(out / "final"), "draft": draft,
            "resumed_from_step": start_step}


def _run_steps(config, target, draft, tokenizer, chunks, optimizer, scheduler, params, start_step,
               history, device, progress) -> int:
    checkpoint = Path(config.output_dir) / "checkpoint"
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes > 0 else math.inf
    bar = tqdm(range(start_step, config.steps), desc="distilling", initial=start_step, total=config.steps,
               disable=not progress)
    completed = start_step
    for step in bar:
        batch = batch_at(chunks, step, config.batch_size, config.seed).to(device)
        loss, acceptance = distill_step(target, draft, batch, config, device)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss.item()} at step {step}; lower lr (now {config.lr}) or check the data. "
                f"The last good checkpoint is in {checkpoint}"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        history.append({"step": step + 1, "loss": round(loss.item(), 5), "acceptance": round(acceptance.item(), 5)})
        bar.set_postfix(loss=f"{loss.item():.3f}", accept=f"{acceptance.item():.3f}")
        if (step + 1) % config.log_every == 0:
            log.info("step %d loss %.4f expected acceptance %.4f", step + 1, loss.item(), acceptance.item())
        completed = step + 1
        done = completed >= config.steps or time.monotonic() > deadline
        if completed % config.save_every == 0 or done:
            save_checkpoint(checkpoint, draft, tokenizer, optimizer, completed, history)
        if done:
            break
    bar.close()
    return completed
