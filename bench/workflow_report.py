"""The workflow report: results.json, report.md with the tables, and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

KS = list(range(1, 9))


def predicted_speedups(forced: dict, cost_ratio: float, greedy: bool = True) -> list[float]:
    """Speedup over the target alone for k = 1..8: τ(k) / (k c + 1), τ chained from the
    teacher-forced acceptance."""
    tau = forced["predicted_tau_greedy" if greedy else "predicted_tau"]
    return [tau[k - 1] / (k * cost_ratio + 1) for k in KS]


def _cost_ratio(result: dict, target_step: float) -> float:
    return result["decoded"]["greedy"]["draft_step_seconds"] / target_step


def rows(summary: dict) -> list[dict]:
    """One table row per drafter."""
    alone, target_step = summary["target_alone_tokens_per_s"], summary["target_step_seconds"]
    hf = max(summary["hf_generate_tokens_per_s"].values())
    table = []
    for name, r in summary["drafts"].items():
        greedy, hot = r["decoded"]["greedy"], r["decoded"]["t0.7"]
        predicted = predicted_speedups(r["teacher_forced"], _cost_ratio(r, target_step))[3]
        measured = greedy["tokens_per_s"] / alone
        table.append({
            "drafter": name, "alpha": r["teacher_forced"]["alpha_greedy"], "alpha_t1": r["teacher_forced"]["alpha"],
            "tau": greedy["tau"], "tokens_per_s": greedy["tokens_per_s"], "speedup": measured,
            "over_hf": greedy["tokens_per_s"] / hf, "predicted": predicted, "measured_over_predicted":
                measured / predicted if predicted else float("nan"),
            "tokens_per_s_t07": hot["tokens_per_s"], "speedup_t07": hot["tokens_per_s"] / alone,
            "hf_assisted": r["hf_assisted_tokens_per_s"],
        })
    return table


def markdown(summary: dict, table: list[dict]) -> str:
    hf = summary["hf_generate_tokens_per_s"]
    lines = [
        f"# Distillation workflow — preset `{summary['preset']}`", "",
        f"Default target, {summary['training_tokens_per_draft']:,} training tokens per draft "
        f"({summary['answer_tokens']:,} target-answer tokens where a recipe reads them), k = {summary['k']}, "
        f"drafting stops below draft probability {summary['draft_confidence']} and trained drafts draft only their "
        f"{summary['draft_vocab']} most frequent training tokens, "
        f"{summary['decode_prompts']} held-out prompts x {summary['max_new_tokens']} new tokens decoded, "
        f"teacher-forced acceptance on {summary['heldout_prompts']} held-out prompts. "
        f"Target alone: {summary['target_alone_tokens_per_s']:.1f} tok/s on our engine; HF `generate` "
        f"{hf.get('fp32', 0):.1f} (fp32) / {hf.get('bf16', 0):.1f} (bf16) tok/s. {_runtime(summary)}", "",
        "| drafter | α greedy | α T=1 | τ | tok/s | speedup | vs HF generate | predicted | measured/pred. "
        "| tok/s T=0.7 | speedup T=0.7 | HF assisted tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table:
        assisted = f"{r['hf_assisted']:.1f}" if r["hf_assisted"] else "—"
        lines.append(f"| {r['drafter']} | {r['alpha']:.3f} | {r['alpha_t1']:.3f} | {r['tau']:.2f} | "
                     f"{r['tokens_per_s']:.1f} | {r['speedup']:.2f}× | {r['over_hf']:.2f}× | {r['predicted']:.2f}× | "
                     f"{r['measured_over_predicted']:.2f} | {r['tokens_per_s_t07']:.1f} | {r['speedup_t07']:.2f}× | "
                     f"{assisted} |")
    for name, why in summary.get("pending", {}).items():
        lines.append(f"| {name} | pending ({why}) | | | | | | | | | | |")
    alone = summary["target_alone_tokens_per_s"]
    for name, r in summary["drafts"].items():
        if "greedy_tree" in r["decoded"]:
            tree = r["decoded"]["greedy_tree"]
            lines += ["", f"{name} drafting a tree {tree['tree']} instead (greedy; `--draft-tree`): "
                          f"τ {tree['tau']:.2f}, {tree['tokens_per_s']:.1f} tok/s, "
                          f"{tree['tokens_per_s'] / alone:.2f}× the target alone."]
    lines += ["", "α: teacher-forced acceptance on the target's greedy answers (greedy: argmax agreement; T=1: "
              "Σ min(p, q)). τ, tok/s and speedup: measured decoding, greedy, over the target alone on our engine. "
              "predicted: τ(k=4) chained from the teacher-forced α, over (k c + 1) with the measured cost ratio c.",
              "", "![acceptance by position](acceptance_by_position.png)", "",
              "![speedup against k](speedup_vs_k.png)", "", "![training curves](training_curves.png)", "",
              "![tokens per second](tokens_per_s.png)", ""]
    return "\n".join(lines)


def _runtime(summary: dict) -> str:
    """This run's minutes and, when every stage's time is known, the preset's runtime from scratch."""
    text = f"This run took {summary['minutes']} min"
    scratch = summary.get("from_scratch_minutes")
    if scratch is None:
        return text + " (reused stages ran before their times were kept, so the runtime from scratch is unknown)."
    return text + f"; from scratch the preset takes {scratch} min (answers, training and measuring)."


def _save(fig, ax, path: Path) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the curves stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_acceptance(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    for name, r in summary["drafts"].items():
        ax.plot(KS, r["teacher_forced"]["alpha_greedy_per_position"], marker="o", label=name)
    ax.set(xlabel="draft position j", ylabel="acceptance at j, given 1..j-1 accepted",
           title="Held-out acceptance by draft position (greedy, teacher-forced)", ylim=(0, 1.02), xticks=KS)
    _save(fig, ax, path)


def plot_speedup(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    alone, step = summary["target_alone_tokens_per_s"], summary["target_step_seconds"]
    for i, (name, r) in enumerate(summary["drafts"].items()):
        color = f"C{i % 10}"
        ax.plot(KS, predicted_speedups(r["teacher_forced"], _cost_ratio(r, step)), color=color, label=name)
        ax.plot([summary["k"]], [r["decoded"]["greedy"]["tokens_per_s"] / alone], "o", color=color)
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="drafts per step k", ylabel="speedup over the target alone (x)", xticks=KS,
           title="Predicted speedup τ(k)/(k·c + 1) (lines) and measured at k = 4 (dots)")
    _save(fig, ax, path)


def plot_training(summary: dict, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, history) in enumerate(summary["histories"].items()):
        if not history:
            continue
        color = f"C{(i + 2) % 10}"  # the same colours as the other plots (model-free drafters come first there)
        left.plot([h["step"] for h in history], [h["loss"] for h in history], color=color, lw=1, label=name)
        evals = [h for h in history if "eval" in h]
        right.plot([h["step"] for h in evals], [h["eval"]["alpha"] for h in evals], marker="o", color=color,
                   label=name)
    left.set(xlabel="step", ylabel="training loss (its own divergence)", yscale="log", title="Training loss")
    right.set(xlabel="step", ylabel="held-out α (Σ min(p, q), teacher-forced)", title="Held-out acceptance")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tokens(summary: dict, table: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    names = [r["drafter"] for r in table]
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], [r["tokens_per_s"] for r in table], height=0.4, label="greedy")
    ax.barh([i - 0.2 for i in y], [r["tokens_per_s_t07"] for r in table], height=0.4, label="T = 0.7")
    ax.axvline(summary["target_alone_tokens_per_s"], color="black", ls="--", lw=1, label="target alone (our engine)")
    ax.axvline(max(summary["hf_generate_tokens_per_s"].values()), color="gray", ls=":", lw=1.5,
               label="target alone (HF generate)")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="tokens per second (2 CPU cores, bf16, k = 4)", title="Decoding speed by drafter")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(summary: dict, out: Path) -> str:
    """Write everything to ``out``; returns the headline table (markdown)."""
    out.mkdir(parents=True, exist_ok=True)
    table = rows(summary)
    (out / "results.json").write_text(json.dumps(summary | {"table": table}, indent=2))
    text = markdown(summary, table)
    (out / "report.md").write_text(text)
    plot_acceptance(summary, out / "acceptance_by_position.png")
    plot_speedup(summary, out / "speedup_vs_k.png")
    plot_training(summary, out / "training_curves.png")
    plot_tokens(summary, table, out / "tokens_per_s.png")
    return text.split("\n\n![")[0]
