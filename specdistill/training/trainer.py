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

from specdistill.data.batches import TokenRows
from specdistill.models import check_compatible, draft_tokenizer, load_target, prune_draft, save_draft_vocab, vocab_size
from specdistill.models.eagle3 import Eagle3Head
from specdistill.models.loading import native_bf16
from specdistill.options import changed_fields
from specdistill.serve.datastore import CORPUS_FILE, corpus_for, save_head_corpus
from specdistill.training.checkpoints import recover_checkpoint, replace_dir
from specdistill.training.config import TrainConfig
from specdistill.training.eagle3_head import blend_with_start, build_head
from specdistill.training.feature_cache import feature_rows
from specdistill.training.heldout_eval import HeldOutEval, card_figures, last_eval
from specdistill.training.loop import TimeBudget, TrainLoop
from specdistill.training.lora import add_lora, has_adapters, load_adapters, plain_model
from specdistill.training.model_card import write_model_card
from specdistill.training.onpolicy import OnPolicyBatches
from specdistill.training.sources import data_rows, pad_id, read_data
from specdistill.training.step import Student, autocast, fusable
from specdistill.training.teacher_cache import check_cache_fits, load_cache

log = logging.getLogger(__name__)


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


def _lr_factor(step: int, config: TrainConfig, budget_used: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 10% over ``steps``, or over the run's ``max_minutes`` when
    ``budget_used`` (the share of them spent) runs ahead: a run on a time budget (``specdistill adapt``,
    ``--steps 100000 --max-minutes 15``) then ends at its low learning rate, not at its peak."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    progress = max(progress, budget_used)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _build_draft(config: TrainConfig, target, device, rows=None, eos_ids=()):
    """Resume from the run's checkpoint, else the given draft, else a pruned target (or a
    new EAGLE-3 head); with ``lora_rank``, wrapped with (fresh or resumed) LoRA adapters."""
    checkpoint = Path(config.output_dir) / "checkpoint"
    recover_checkpoint(checkpoint)
    resuming = (checkpoint / "trainer_state.pt").exists()
    if config.draft_type == "eagle3":
        return build_head(config, target, rows, list(eos_ids), checkpoint if resuming else None), \
            checkpoint if resuming else None
    if resuming and not has_adapters(checkpoint):
        log.info("resuming from %s", checkpoint)
        return AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device), checkpoint
    if config.draft:
        draft = AutoModelForCausalLM.from_pretrained(config.draft, dtype=torch.float32).to(device)
    else:
        draft = prune_draft(target, [int(x) for x in config.keep_layers.split(",") if x.strip()]).float().to(device)
    if not config.lora_rank:
        return draft, None
    if resuming:  # the base is rebuilt as it was (pruning is deterministic); the adapters are the trained part
        log.info("resuming LoRA adapters from %s", checkpoint)
        return load_adapters(draft, checkpoint), checkpoint
    return add_lora(draft, config.lora_rank, config.lora_alpha, config.lora_targets), None


def check_resume(config: TrainConfig) -> None:
    """A run that resumes must train what it started with: refuse changed fields (those
    not marked resumable, such as steps), naming them."""
    out = Path(config.output_dir)
    recover_checkpoint(out / "checkpoint")
    saved = out / "train_config.json"
    if not (out / "checkpoint" / "trainer_state.pt").exists() or not saved.exists():
        return
    changes = changed_fields(json.loads(saved.read_text()), config)
    if changes:
        raise ValueError(f"{out} holds a run started with other settings ({'; '.join(changes)}); resume it with "
                         "the same settings, or pass another output_dir to start a new run")


def _as_list(ids) -> list[int]:
    return [] if ids is None else [ids] if isinstance(ids, int) else list(ids)


def training_rows(config: TrainConfig, target, tokenizer, progress: bool = True, source=None) -> TokenRows:
    """The training rows of ``config.data``: as many tokens of text as the run's steps
    take, the target's answers cached in ``output_dir``."""
    return data_rows(config, target, tokenizer, max_tokens=config.steps * config.batch_size * config.seq_len,
                     workdir=Path(config.output_dir), progress=progress, source=source)


@dataclass
class Teacher:
    """Where the teacher's distributions come from: the live ``target`` (None when a
    cache holds them), and what the export needs to know of it."""

    target: object
    name: str
    eos_ids: list[int]
    vocab: int


def _teacher_and_rows(config: TrainConfig, accelerator, target, tokenizer, data, progress: bool):
    """(teacher, tokenizer, training rows, draft, checkpoint resumed from). The target is
    loaded unless a teacher cache and a starting draft make it unnecessary."""
    cache = None
    if config.teacher_cache:
        data, cache = load_cache(config.teacher_cache)  # the cache's errors come before any model load
        check_cache_fits(cache, config)
    source = read_data(config) if data is None else None  # the data's errors come before any model load
    # The target is needed for its distributions, for the held-out eval, or to prune a draft from.
    needs_target = (config.alpha > 0 and not cache) or config.eval_every > 0 or not config.draft or \
        config.draft_type == "eagle3"
    if target is None and needs_target:
        target, tokenizer = load_target(config.target)
    elif target is None and tokenizer is None:
        tokenizer = draft_tokenizer(config.draft, config.target)
    if target is not None:
        target = target.to(accelerator.device).eval()
        if config.bf16 and not native_bf16(accelerator.device):
            log.warning("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 would be emulated and "
                        "several times slower, so training runs in fp32 (--bf16 false silences this)")
        if config.draft_type == "eagle3" and config.bf16 and native_bf16(accelerator.device):
            # the head's teacher: bf16 weights, as it serves
            target = target.to(torch.bfloat16)
    if data is None:
        with accelerator.main_process_first():  # the main process generates/tokenizes; the others reuse its cache
            data = training_rows(config, target, tokenizer, progress and accelerator.is_main_process, source)
    rows = TokenRows.from_chunks(data) if isinstance(data, torch.Tensor) else data
    eos_ids = _as_list(getattr(target.generation_config, "eos_token_id", None)) if target is not None else []
    draft, resumed_from = _build_draft(config, target, accelerator.device, rows, eos_ids)
    if config.feature_cache:
        with accelerator.main_process_first():  # the main process makes the cache; the others read it
            rows = feature_rows(config.feature_cache, target, rows, draft.layer_ids,
                                lambda: autocast(accelerator.device, config.bf16),
                                progress=progress and accelerator.is_main_process)
    if cache:
        teacher = Teacher(None, cache["target_name"], cache["eos_token_ids"], cache["vocab_size"])
        if vocab_size(draft) != teacher.vocab:
            raise ValueError(f"vocabulary mismatch: the cached teacher predicts {teacher.vocab} tokens, the draft "
                             f"{vocab_size(draft)}")
    elif target is None:  # black-box SFT from a given draft: the teacher is only its text
        teacher = Teacher(None, config.target, [], vocab_size(draft))
    else:
        if config.draft_type == "lm":
            check_compatible(target, draft)
        teacher = Teacher(target, getattr(target.config, "name_or_path", config.target),
                          _as_list(getattr(target.generation_config, "eos_token_id", None)), vocab_size(target))
    return teacher, tokenizer, rows, draft, resumed_from


def train(config: TrainConfig, target=None, tokenizer=None, data: TokenRows | torch.Tensor | None = None,
          progress: bool = True) -> dict:
    """Distill a draft; returns a summary with the loss/acceptance history and the
    path of the saved draft (``output_dir/final``, a plain HF checkpoint). ``data``:
    training rows (or fixed-text chunks [N, T]); by default those of ``config.data``."""
    trackers = [name for name in config.report_to.split(",") if name and name != "none"]
    accelerator = Accelerator(cpu=pick_device(config.device).type == "cpu", log_with=trackers or None,
                              project_dir=config.output_dir)
    device, world = accelerator.device, accelerator.num_processes
    if config.batch_size % (world * config.grad_accum):
        raise ValueError(f"batch_size {config.batch_size} must split evenly into {world} process(es) x "
                         f"grad_accum {config.grad_accum}")
    torch.manual_seed(config.seed)
    check_resume(config)
    teacher, tokenizer, rows, draft, resumed_from = _teacher_and_rows(config, accelerator, target, tokenizer, data,
                                                                      progress)
    draft.train()
    if config.lora_rank or config.draft_type == "eagle3":
        params = [p for p in draft.parameters() if p.requires_grad]  # the adapters, or the whole head
    else:
        params = trainable_parameters(draft, config.train_embeddings)
    # The fused-linear loss needs the live teacher's states; SFT (alpha 0) and a cache take the logits.
    hidden = config.fused_linear and config.alpha > 0 and teacher.target is not None and \
        config.draft_type == "lm" and fusable(teacher.target, draft)
    student = draft if config.draft_type == "eagle3" else Student(draft, hidden)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start_step, history = 0, []
    if resumed_from is not None:
        state = torch.load(resumed_from / "trainer_state.pt", map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        history = json.loads((resumed_from / "history.json").read_text())
    if world > 1:
        student = accelerator.prepare(student)  # DDP: gradients averaged over the processes
    budget = TimeBudget()  # the loop keeps its share of max_minutes spent, agreed by every process
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s + start_step, config, budget.used))
    out = Path(config.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    onpolicy = OnPolicyBatches(rows.prompts or [], config.onpolicy_fraction, config.onpolicy_temperature,
                               config.onpolicy_tokens, config.seq_len, pad_id(tokenizer), config.seed)
    evaluator = None
    if config.eval_every and accelerator.is_main_process:
        evaluator = HeldOutEval(config, teacher.target, tokenizer, pad_id(tokenizer), progress)

    def export(path: Path, model, figures: dict | None) -> None:
        _export(path, plain_model(model), tokenizer, teacher.eos_ids, rows)
        card = card_figures(figures, len(evaluator.prompts)) if figures else None
        write_model_card(path, config, history, teacher.name, card)

    def export_best(figures: dict) -> None:
        replace_dir(out / "best", lambda path: export(path, draft, figures))

    accelerator.init_trackers("tensorboard", config=_scalars(config))
    loop = TrainLoop(config, accelerator, teacher.target, student, draft, tokenizer, rows, optimizer, scheduler,
                     params, onpolicy, teacher.eos_ids, evaluator, export_best, budget)
    step = loop.run(start_step, history, progress and accelerator.is_main_process)
    draft = plain_model(draft).eval()
    if config.blend_start:
        blend_with_start(draft, config, teacher.target)
    if accelerator.is_main_process:  # a blended head was never evaluated: its card says how to measure it
        export(out / "final", draft, None if config.blend_start else last_eval(history))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers (and, under torchrun, the process group)
    return {"steps": step, "history": history, "draft_dir": str(out / "final"), "draft": draft,
            "resumed_from_step": start_step, "processes": world}


def _scalars(config: TrainConfig) -> dict:
    """The settings as tracker hyperparameters (TensorBoard takes numbers, strings and booleans)."""
    return {key: value for key, value in asdict(config).items() if isinstance(value, (int, float, str, bool))}


def answer_spans(rows: TokenRows) -> list[list[int]]:
    """The tokens each row's loss counts (its answers), one list per contiguous span, in row order."""
    # A column that never counts ends each row, so no span runs on into the next row once flattened.
    counts = torch.nn.functional.pad(rows.loss_mask[:, :-1], (0, 1)).flatten()
    ids = torch.nn.functional.pad(rows.input_ids[:, 1:], (0, 1)).flatten()
    edges = torch.diff(counts.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8))
    starts, ends = torch.nonzero(edges == 1).flatten(), torch.nonzero(edges == -1).flatten()
    return [ids[start:end].tolist() for start, end in zip(starts.tolist(), ends.tolist())]


def _export(path: Path, draft, tokenizer, target_eos: list[int], rows: TokenRows) -> None:
    draft.save_pretrained(path)
    if isinstance(draft, Eagle3Head):  # the speculators format: the head's vocabulary is in it
        # The answers it trained on (with its starting draft's) as the retrieval branch's corpus: a head
        # adapted to captured traffic brings that traffic's phrasing along when it is swapped in.
        save_head_corpus(path / CORPUS_FILE, corpus_for(draft, draft.vocab_size), answer_spans(rows),
                         draft.vocab_size)
        return
    eos = list(target_eos)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
        eos += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    # The draft vocabulary: what the draft is trained to predict, by frequency.
    save_draft_vocab(path, rows.input_ids[rows.loss_mask], vocab_size(draft), eos)
