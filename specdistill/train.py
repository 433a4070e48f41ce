"""Online white-box distillation of a draft model from a frozen target.

Each step: the target runs forward under ``no_grad`` on a batch of rows, the
draft runs forward with gradients, and ``distill_loss`` pulls the draft's
next-token distribution towards the target's at every position the batch's loss
mask counts (answers, not prompts). Loss and acceptance are kept as sums over
counted positions and reduced across processes before any ratio is taken.

The same command runs in one process or several (``torchrun`` / ``accelerate
launch``: DDP through accelerate, gloo on CPU, NCCL on GPU). ``batch_size`` is
the global batch: every process builds the step's batch (a function of the step)
and takes its share of the rows, in ``grad_accum`` micro-batches. Only the main
process writes checkpoints, logs and the progress bar. Checkpoints (draft
weights, optimizer, step) are written every ``save_every`` steps; a killed run
started again with the same ``output_dir`` resumes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from specdistill.batches import TokenRows, pack_records
from specdistill.checkpoints import recover_checkpoint
from specdistill.data import corpus_files, split_files, token_chunks
from specdistill.distill import Student, distill_step, fusable  # noqa: F401 (distill_step: the step, for callers)
from specdistill.losses import DIVERGENCES
from specdistill.model_card import write_model_card
from specdistill.models import DEFAULT_TARGET, check_compatible, load_target, prune_draft, save_draft_vocab, vocab_size
from specdistill.onpolicy import OnPolicyBatches
from specdistill.records import dataset_records, dataset_texts, is_dataset, read_dataset
from specdistill.target_data import generate_answers
from specdistill.train_loop import TrainLoop

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Distill a draft for a target. CLI flags are generated from these fields."""

    target: str = DEFAULT_TARGET  # the embedded default or a local HF model directory
    draft: str = ""  # a local HF draft directory; empty = prune the target
    keep_layers: str = "0,1,2,-1"  # target layers the pruned draft keeps (negative = from the end)
    output_dir: str = "runs/draft"
    data: str = "stdlib"  # stdlib, target (its answers), a text file/folder, .jsonl, .parquet or a saved dataset
    text_field: str = "text"  # the text column of a dataset of plain text
    generate_tokens: int = 40000  # with data 'target': answer tokens to generate (cached in output_dir)
    generate_temperature: float = 0.8  # with data 'target': sampling temperature of the answers
    onpolicy_fraction: float = 0.0  # share of steps that train on the draft's own continuations of training prompts
    onpolicy_temperature: float = 1.0  # sampling temperature of those continuations
    onpolicy_tokens: int = 128  # tokens the draft writes per on-policy row
    seq_len: int = 256
    batch_size: int = 8  # the global batch (rows per step, over all processes)
    grad_accum: int = 1  # micro-batches per process per step (same result, less memory)
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
        for name in ("seq_len", "batch_size", "grad_accum", "steps", "save_every", "log_every"):
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
        if not 0 <= self.onpolicy_fraction <= 1:
            raise ValueError(f"onpolicy_fraction must be in [0, 1], got {self.onpolicy_fraction}")
        if self.onpolicy_tokens < 1 or not self.onpolicy_temperature >= 0:
            raise ValueError("onpolicy_tokens must be >= 1 and onpolicy_temperature >= 0")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def read_data(config: TrainConfig):
    """What ``config.data`` names, read without any model: the dataset and its kind, or
    the text files (None for the target's answers). Missing, empty or wrongly shaped
    data fails here, before any model loads."""
    if config.data == "target":
        return None
    if is_dataset(config.data):
        return read_dataset(config.data, config.text_field)
    return corpus_files(config.data)


def training_rows(config: TrainConfig, target, tokenizer, progress: bool = True, source=None) -> TokenRows:
    """The training rows of ``config.data`` (``source``: what ``read_data`` returned, if it
    ran already): records (prompt, answer: only answer tokens count) from the target's
    answers or a dataset, or plain text cut into chunks."""
    max_tokens = config.steps * config.batch_size * config.seq_len
    pad = _pad_id(tokenizer)
    if config.data == "target":
        records = generate_answers(target, tokenizer, config.generate_tokens,
                                   cache=Path(config.output_dir) / "target_answers.jsonl",
                                   temperature=config.generate_temperature, seed=config.seed, progress=progress)
        return pack_records(records, config.seq_len, pad)
    source = read_data(config) if source is None else source
    if isinstance(source, tuple):
        dataset, kind = source
        if kind == "text":
            texts = dataset_texts(dataset, config.text_field)
            return TokenRows.from_chunks(token_chunks(tokenizer, texts, config.seq_len, max_tokens, progress))
        return pack_records(dataset_records(dataset, kind, tokenizer), config.seq_len, pad)
    files, _ = split_files(source, heldout_fraction=0.05, seed=config.seed)
    return TokenRows.from_chunks(token_chunks(tokenizer, files, config.seq_len, max_tokens, progress=progress))


def train(config: TrainConfig, target=None, tokenizer=None, data: TokenRows | torch.Tensor | None = None,
          progress: bool = True) -> dict:
    """Distill a draft; returns a summary with the loss/acceptance history and the
    path of the saved draft (``output_dir/final``, a plain HF checkpoint). ``data``:
    training rows (or fixed-text chunks [N, T]); by default those of ``config.data``."""
    accelerator = Accelerator(cpu=pick_device(config.device).type == "cpu")
    device, world = accelerator.device, accelerator.num_processes
    if config.batch_size % (world * config.grad_accum):
        raise ValueError(f"batch_size {config.batch_size} must split evenly into {world} process(es) x "
                         f"grad_accum {config.grad_accum}")
    torch.manual_seed(config.seed)
    source = read_data(config) if data is None else None  # the data's errors come before any model load
    if target is None:
        target, tokenizer = load_target(config.target)
    target = target.to(device).eval()
    if data is None:
        with accelerator.main_process_first():  # the main process generates/tokenizes; the others reuse its cache
            data = training_rows(config, target, tokenizer, progress and accelerator.is_main_process, source)
    rows = TokenRows.from_chunks(data) if isinstance(data, torch.Tensor) else data
    draft, resumed_from = _build_draft(config, target, device)
    check_compatible(target, draft)
    draft.train()
    params = trainable_parameters(draft, config.train_embeddings)
    student = Student(draft, config.fused_linear and fusable(target, draft))
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start_step, history = 0, []
    if resumed_from is not None:
        state = torch.load(resumed_from / "trainer_state.pt", map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        history = json.loads((resumed_from / "history.json").read_text())
    if world > 1:
        student = accelerator.prepare(student)  # DDP: gradients averaged over the processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s + start_step, config))
    out = Path(config.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    onpolicy = OnPolicyBatches(rows.prompts or [], config.onpolicy_fraction, config.onpolicy_temperature,
                               config.onpolicy_tokens, config.seq_len, _pad_id(tokenizer), config.seed)
    eos = _as_list(getattr(target.generation_config, "eos_token_id", None))
    loop = TrainLoop(config, accelerator, target, student, draft, tokenizer, rows, optimizer, scheduler, params,
                     onpolicy, eos)
    step = loop.run(start_step, history, progress and accelerator.is_main_process)
    draft.eval()
    if accelerator.is_main_process:
        _export(out / "final", draft, tokenizer, target, rows)
        write_model_card(out / "final", config, history, getattr(target.config, "name_or_path", config.target))
    accelerator.wait_for_everyone()
    return {"steps": step, "history": history, "draft_dir": str(out / "final"), "draft": draft,
            "resumed_from_step": start_step, "processes": world}


def _pad_id(tokenizer) -> int:
    return (tokenizer.eos_token_id if tokenizer is not None else None) or 0


def _export(path: Path, draft, tokenizer, target, rows: TokenRows) -> None:
    draft.save_pretrained(path)
    eos = []
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    eos += _as_list(getattr(target.generation_config, "eos_token_id", None))
    # The draft vocabulary: what the draft is trained to predict, by frequency.
    save_draft_vocab(path, rows.input_ids[rows.loss_mask], vocab_size(draft), eos)
