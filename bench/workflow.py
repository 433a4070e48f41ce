"""The whole distillation workflow, measured side by side: which draft should I make,
and what does it buy me?

For the default target and ONE training-token budget for all, it makes drafts by
  (a) pruning only (target layers 0, 1, 2, -1, no training)
  (b) black-box SFT: cross entropy on the teacher's answers (text only)
  (c) white-box forward KL on fixed text (the standard library's source)
  (d) forward KL on the target's answers
  (e) TVD and JSD on the target's answers (the better one is marked)
  (f) target answers plus 25% on-policy batches
  (g) the EAGLE-3-style head on the target's hidden states, trained with training-time test
and measures each, the model-free drafters (prompt lookup, n-gram), and HF assisted
generation with the same drafts, on held-out prompts: teacher-forced acceptance per
draft position and predicted τ for k = 1..8, then measured decoding (k = 4, greedy and
T = 0.7): tokens/s and speedup over the target alone, measured over predicted.

Steps whose results exist (trained drafts in --runs, the target's answers) are reused,
so a rerun only measures. Ctrl-C or SIGTERM stops it keeping every stage's work and
minutes (a training run saves the step in flight), so the preset can run over several
sittings; --train-only trains without measuring, for a measurement in one quiet sitting
later. Writes results.json, report.md and PNG plots to --out.

    python bench/workflow.py --quick     # 80 steps per draft, ~30 min on 2 cores
    python bench/workflow.py             # the full preset: 400 steps per draft, 200k answer tokens,
                                         # 166 min from scratch on 2 cores (17 min to remeasure)

Prints the headline table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from specdistill.serve.model_free import ModelFreeDrafter  # noqa: E402
from specdistill.serve.tree import TreeShape  # noqa: E402
from workflow_report import write_report  # noqa: E402

from specdistill.bench import measure_hf_baseline  # noqa: E402
from specdistill.cli import PRESETS as TRAIN_PRESETS  # noqa: E402
from specdistill.data.batches import record_rows  # noqa: E402
from specdistill.data.prompts import HELDOUT_PROMPTS, chat_prompt_ids  # noqa: E402
from specdistill.measure import _acceptance_summary, measure_speculative, teacher_forced_acceptance  # noqa: E402
from specdistill.models import load_draft_vocab, load_target, prune_draft  # noqa: E402
from specdistill.models.eagle3 import Eagle3Head  # noqa: E402
from specdistill.models.eagle3_io import is_head_dir, load_head  # noqa: E402
from specdistill.options import read_config_file  # noqa: E402
from specdistill.teacher.target_answers import answer_prompts, generate_answers, load_records  # noqa: E402
from specdistill.training.config import TrainConfig
from specdistill.training.eagle3_head import head_acceptance  # noqa: E402
from specdistill.training.graceful_stop import TrainingStopped  # noqa: E402
from specdistill.training.trainer import train  # noqa: E402

PRESETS = {  # steps per draft (x batch 4 x 256 tokens), target-answer tokens, decode prompts, new tokens per prompt
    "quick": {"steps": 80, "answer_tokens": 40000, "decode_prompts": 6, "max_new_tokens": 48},
    "full": {"steps": 400, "answer_tokens": 200000, "decode_prompts": 12, "max_new_tokens": 64},
}
K = 4  # drafts per step in the measured decoding
# Every drafter is measured as it would be served: drafting stops below this draft probability
# (HF assisted's default), and a trained draft drafts only its 8192 most frequent training tokens.
DRAFT_CONFIDENCE, DRAFT_VOCAB = 0.4, 8192
TREE = TreeShape()  # a head is also measured drafting this tree


def recipes(answers: str) -> dict[str, dict]:
    """Draft name -> TrainConfig overrides (None: not trained)."""
    return {
        "(a) pruned only": None,
        "(b) black-box SFT": {"data": answers, "alpha": 0.0},
        "(c) fkl, fixed text": {"data": "stdlib"},
        "(d) fkl, target answers": {"data": answers},
        "(e) tvd, target answers": {"data": answers, "divergence": "tvd"},
        "(e) jsd, target answers": {"data": answers, "divergence": "jsd"},
        "(f) fkl + 25% on-policy": {"data": answers, "onpolicy_fraction": 0.25},
        "(g) EAGLE-3 head": {"data": answers} | head_recipe(),
    }


def head_recipe() -> dict:
    """The shipped head's recipe (presets/default-draft.yaml) but for its data and length."""
    preset = read_config_file(str(TRAIN_PRESETS / "default-draft.yaml"))
    return {key: preset[key] for key in ("draft_type", "lr", "warmup_steps", "head_vocab_size", "ttt_steps",
                                         "ttt_decay")}


class StageClock:
    """Minutes each stage (the target's answers, each draft's training) took when it did its work, kept
    in ``stage_minutes.json`` beside the runs: a rerun that reuses a stage still knows what it cost, so
    the report gives the preset's runtime from scratch even when it was made over several runs."""

    def __init__(self, path: Path):
        self.path = path
        self.minutes = json.loads(path.read_text()) if path.exists() else {}
        self.this_run = 0.0  # minutes of stage work done by this run

    @contextlib.contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:  # a stage interrupted by an exception keeps its time; a SIGKILL loses it
            minutes = (time.perf_counter() - started) / 60
            self.this_run += minutes
            self.minutes[name] = round(self.minutes.get(name, 0.0) + minutes, 2)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.minutes, indent=1))


def make_draft(name: str, overrides: dict | None, base: TrainConfig, target, tokenizer, clock: StageClock) -> tuple:
    """(draft, training history): trained unless its run has finished already."""
    if overrides is None:
        return prune_draft(target, [0, 1, 2, -1]), []
    config = replace(base, output_dir=str(Path(base.output_dir) / _slug(name)), **overrides)
    final = Path(config.output_dir) / "final"
    if (final / "config.json").exists() and (Path(config.output_dir) / "checkpoint" / "history.json").exists():
        history = json.loads((Path(config.output_dir) / "checkpoint" / "history.json").read_text())
        if history and history[-1]["step"] >= config.steps:
            print(f"{name}: reusing {final}", flush=True)
            return load_trained(final, target), history
    print(f"{name}: training {config.steps} steps", flush=True)
    shared = Path(base.output_dir) / "eval_answers.jsonl"  # the held-out answers, made once for every run
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    if shared.exists() and not (Path(config.output_dir) / "eval_answers.jsonl").exists():
        shutil.copy(shared, Path(config.output_dir) / "eval_answers.jsonl")
    target.float()
    with clock.stage(f"training {name}"):
        result = train(config, target=target, tokenizer=tokenizer)
    return result["draft"], result["history"]


def from_scratch_minutes(summary: dict, recipes: dict, clock: StageClock) -> float | None:
    """The preset's runtime from nothing: every stage's recorded minutes plus this run's measuring
    (None while a stage ran before its time was kept)."""
    stages = ["target answers", "held-out answers"] + [f"training {name}" for name, overrides in recipes.items()
                                                        if overrides is not None]
    if any(stage not in clock.minutes for stage in stages):
        return None
    measuring = summary["minutes"] - clock.this_run
    return round(sum(clock.minutes[stage] for stage in stages) + measuring, 1)


def load_trained(final: Path, target):
    """A finished run's export: an EAGLE-3 head (on the target) or a causal LM."""
    return load_head(final, target, torch.float32) if is_head_dir(final) else \
        AutoModelForCausalLM.from_pretrained(final).eval()


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.split(") ", 1)[1]).strip("-")


@torch.no_grad()
def model_free_acceptance(method: str, target, rows, max_k: int = 8) -> dict:
    """Teacher-forced acceptance of a model-free drafter: at each answer position, the
    token it drafts from the true prefix (0 when it finds no match) against the target's
    argmax (greedy) and the target's probability of it (sampling)."""
    drafter = ModelFreeDrafter(method, 1)
    greedy, sampled = [], []
    for ids, mask, prompt in zip(rows.input_ids, rows.loss_mask, rows.prompts):
        positions = mask.nonzero()[:, 0].tolist()
        probs = torch.softmax(target(input_ids=ids[None]).logits[0].float(), -1)
        tokens = ids.tolist()
        g, s = [], []
        for t in positions:
            proposal = drafter.drafts_for(len(prompt), tokens[: t + 1], 1)
            hit = bool(proposal) and proposal[0] == tokens[t + 1]
            g.append(float(hit))
            s.append(float(probs[t, proposal[0]]) if proposal else 0.0)
        greedy.append(torch.tensor(g, dtype=torch.float64))
        sampled.append(torch.tensor(s, dtype=torch.float64))
    g, s = _acceptance_summary(greedy, max_k), _acceptance_summary(sampled, max_k)
    return {"alpha": s["alpha"], "alpha_per_position": s["per_position"], "predicted_tau": s["predicted_tau"],
            "alpha_greedy": g["alpha"], "alpha_greedy_per_position": g["per_position"],
            "predicted_tau_greedy": g["predicted_tau"]}


@torch.inference_mode()
def hf_assisted(target, draft, tokenizer, prompts, max_new_tokens: int) -> dict:
    """HF assisted generation (greedy) with the draft, or prompt lookup for 'prompt-lookup'."""
    new, seconds = 0, 0.0
    extra = {"prompt_lookup_num_tokens": K} if draft == "prompt-lookup" else {"assistant_model": draft}
    for prompt in prompts:
        ids = chat_prompt_ids(tokenizer, prompt)
        start = time.perf_counter()
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                              do_sample=False, pad_token_id=tokenizer.eos_token_id, **extra)
        seconds += time.perf_counter() - start
        new += out.shape[1] - ids.shape[1]
    return {"tokens_per_s": new / seconds}


def measure(name, draft, target, tokenizer, prompts, preset, heldout_rows, draft_dir: Path | None = None) -> dict:
    """Teacher-forced figures (fp32) and measured decoding (bf16), greedy and T = 0.7."""
    target.float()
    head = isinstance(draft, Eagle3Head)
    if isinstance(draft, str):
        forced = model_free_acceptance(draft, target, heldout_rows)
    elif head:
        forced = head_acceptance(target, draft.float().eval(), heldout_rows, max_k=8)
    else:
        forced = teacher_forced_acceptance(target, draft.float().eval(), heldout_rows)
    target.to(torch.bfloat16)
    decoder = draft if isinstance(draft, str) else draft.to(torch.bfloat16)
    own_vocab = isinstance(draft, str) or head  # point masses, or the head's own draft vocabulary
    vocab = None if own_vocab else load_draft_vocab(draft_dir, DRAFT_VOCAB) if draft_dir else None
    confidence = 0.0 if isinstance(draft, str) else DRAFT_CONFIDENCE  # a point mass is always confident
    decoded = {}
    for label, temperature in (("greedy", 0.0), ("t0.7", 0.7)):
        run = measure_speculative(target, decoder, tokenizer, prompts, num_draft_tokens=K,
                                  max_new_tokens=preset["max_new_tokens"], temperature=temperature, progress=False,
                                  draft_confidence=confidence, draft_vocab=vocab)
        decoded[label] = {key: run[key] for key in ("alpha", "tau", "tokens_per_s", "draft_step_seconds", "mean_k")}
    if head:  # a head also drafts trees (greedy): how the shipped head is served by bench and demo
        run = measure_speculative(target, decoder, tokenizer, prompts, max_new_tokens=preset["max_new_tokens"],
                                  progress=False, draft_tree=TREE)
        decoded["greedy_tree"] = {"tree": str(TREE), **{key: run[key] for key in ("alpha", "tau", "tokens_per_s")}}
    hf = None
    if name != "n-gram (model-free)" and not head:  # HF has no n-gram drafter and no EAGLE heads
        hf = hf_assisted(target, decoder, tokenizer, prompts, preset["max_new_tokens"])["tokens_per_s"]
    print(f"{name}: teacher-forced alpha {forced['alpha']:.3f} (greedy {forced['alpha_greedy']:.3f}), "
          f"decoding {decoded['greedy']['tokens_per_s']:.1f} tok/s greedy", flush=True)
    return {"teacher_forced": forced, "decoded": decoded, "hf_assisted_tokens_per_s": hf,
            "draft_vocab": None if vocab is None else len(vocab)}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick preset (80 steps per draft)")
    parser.add_argument("--runs", default="runs/workflow", help="trained drafts and answers (reused by a rerun)")
    parser.add_argument("--out", default="", help="the report folder (default bench/results/<date>-<preset>)")
    parser.add_argument("--report-only", action="store_true", help="redraw the report from --out/results.json")
    parser.add_argument("--train-only", action="store_true",
                        help="make the answers and train every draft, measure nothing (a later run measures them "
                             "all in one sitting, so their tokens/s compare)")
    args = parser.parse_args()
    args.preset = "quick" if args.quick else "full"
    args.out = args.out or f"bench/results/{datetime.date.today()}-{args.preset}"
    return args


def main():
    args = parse_args()
    # SIGTERM as Ctrl-C: the stage in flight keeps its minutes (training installs its own handler).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(args)
    except TrainingStopped as stopped:
        sys.exit(f"workflow: {stopped.args[0].replace('run the same command', 'run the workflow')}")


def run(args):
    if args.report_only:
        print(write_report(json.loads((Path(args.out) / "results.json").read_text()), Path(args.out)))
        return
    preset = PRESETS[args.preset]
    started = time.perf_counter()
    runs = Path(args.runs) / args.preset
    base = TrainConfig(output_dir=str(runs), steps=preset["steps"], batch_size=4, seq_len=256, lr=1e-3,
                       save_every=max(1, preset["steps"] // 2), eval_every=max(1, preset["steps"] // 4),
                       eval_prompts=len(HELDOUT_PROMPTS), report_to="none")
    budget = base.steps * base.batch_size * base.seq_len
    target, tokenizer = load_target()
    # The target's answers (sampled, T = 0.8) to training prompts: one file every recipe reads.
    answers = runs / "target_answers.jsonl"
    target.to(torch.bfloat16)
    clock = StageClock(runs / "stage_minutes.json")
    if sum(len(answer) for _, answer in load_records(answers)) < preset["answer_tokens"]:
        with clock.stage("target answers"):
            generate_answers(target, tokenizer, preset["answer_tokens"], cache=answers)
    with clock.stage("held-out answers"):  # cached after the first run: a rerun adds ~0
        heldout = answer_prompts(target, tokenizer, HELDOUT_PROMPTS, runs / "eval_answers.jsonl")
    heldout_rows = record_rows(heldout, tokenizer.eos_token_id)
    prompts = HELDOUT_PROMPTS[: preset["decode_prompts"]]
    if args.train_only:  # every draft trained now; a later run measures them all in one sitting
        for name, overrides in recipes(str(answers)).items():
            make_draft(name, overrides, base, target, tokenizer, clock)
        print(f"workflow: every draft of the {args.preset} preset is trained ({runs}); run it again without "
              "--train-only to measure them")
        return

    results, histories = {}, {}
    baseline = measure_hf_baseline(target, tokenizer, prompts, preset["max_new_tokens"], torch.bfloat16)
    alone = measure_speculative(target, None, tokenizer, prompts, num_draft_tokens=0,
                                max_new_tokens=preset["max_new_tokens"], progress=False)
    for method, name in (("prompt-lookup", "prompt lookup (model-free)"), ("ngram", "n-gram (model-free)")):
        results[name] = measure(name, method, target, tokenizer, prompts, preset, heldout_rows)
    drafts = recipes(str(answers))
    for name, overrides in drafts.items():
        draft, histories[name] = make_draft(name, overrides, base, target, tokenizer, clock)
        final = runs / _slug(name) / "final" if overrides is not None else None
        results[name] = measure(name, draft, target, tokenizer, prompts, preset, heldout_rows, final)
    summary = {
        "preset": args.preset, "training_tokens_per_draft": budget, "answer_tokens": preset["answer_tokens"], "k": K,
        "draft_confidence": DRAFT_CONFIDENCE, "draft_vocab": DRAFT_VOCAB, "decode_prompts": len(prompts),
        "max_new_tokens": preset["max_new_tokens"], "heldout_prompts": len(HELDOUT_PROMPTS),
        "hf_generate_tokens_per_s": {name.split(", ")[1].rstrip(")"): round(r["tokens_per_s"], 2)
                                     for name, r in baseline.items()},
        "target_alone_tokens_per_s": round(alone["tokens_per_s"], 2),
        "target_step_seconds": 1 / alone["tokens_per_s"],
        "drafts": results, "histories": histories,
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "stage_minutes": clock.minutes,
    }
    summary["from_scratch_minutes"] = from_scratch_minutes(summary, drafts, clock)
    headline = write_report(summary, Path(args.out))
    print(headline)
    print(json.dumps({"out": args.out, "minutes": summary["minutes"],
                      "speedup_greedy": {name: round(r["decoded"]["greedy"]["tokens_per_s"]
                                                     / summary["target_alone_tokens_per_s"], 3)
                                         for name, r in results.items()}}))


if __name__ == "__main__":
    main()
