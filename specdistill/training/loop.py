"""The training steps of one process: batches (fixed rows or on-policy), the loss over
counted positions scaled to the global batch, gradient accumulation, checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdistill.training.checkpoints import save_checkpoint
from specdistill.training.graceful_stop import GracefulStop, TrainingStopped
from specdistill.training.heldout_eval import best_alpha, last_eval
from specdistill.training.onpolicy import OnPolicyBatches
from specdistill.training.step import distill_step

log = logging.getLogger(__name__)


@dataclass
class TimeBudget:
    """The share of the run's ``max_minutes`` spent (0 without one), the mean over the processes so that
    every one steps its learning rate alike; the loop updates it after each step."""
    used: float = 0.0


class TrainLoop:
    """The training steps of one process."""

    def __init__(self, config, accelerator, target, student, draft, tokenizer, rows, optimizer, scheduler, params,
                 onpolicy: OnPolicyBatches, eos_ids: list[int], evaluator=None, on_best=None,
                 budget: TimeBudget | None = None):
        self.config, self.accelerator, self.target, self.student, self.draft = config, accelerator, target, student, \
            draft
        self.tokenizer, self.rows, self.optimizer, self.scheduler, self.params = tokenizer, rows, optimizer, \
            scheduler, params
        self.onpolicy, self.eos_ids = onpolicy, eos_ids
        # evaluator: a HeldOutEval (main process only); on_best(figures): export the draft as the best so far.
        self.evaluator, self.on_best = evaluator, on_best
        self.budget = budget or TimeBudget()

    def run(self, start_step: int, history: list, progress: bool) -> int:
        config = self.config
        checkpoint = Path(config.output_dir) / "checkpoint"
        deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes > 0 else math.inf
        bar = tqdm(range(start_step, config.steps), desc="distilling", initial=start_step, total=config.steps,
                   disable=not progress)
        with GracefulStop() as stop:
            completed, stopped = self._steps(bar, start_step, history, deadline, stop, checkpoint)
        bar.close()
        if stopped:
            raise TrainingStopped(completed, str(checkpoint))
        return completed

    def _steps(self, bar, completed: int, history: list, deadline: float, stop: GracefulStop,
               checkpoint: Path) -> tuple[int, bool]:
        """The steps until the last, the deadline or a stop signal: (steps completed, whether a
        signal stopped them short of the last)."""
        config, accelerator = self.config, self.accelerator
        for step in bar:
            onpolicy = self.onpolicy.covers(step)
            lr = self.scheduler.get_last_lr()[0]  # this step's
            loss, acceptance = self.step(step, onpolicy)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"loss is {loss} at step {step}; lower lr (now {config.lr}) or check the data. "
                    f"The last good checkpoint is in {checkpoint}")
            history.append({"step": step + 1, "loss": round(loss, 5), "acceptance": round(acceptance, 5),
                            "lr": float(f"{lr:.4g}")}
                           | ({"onpolicy": True} if onpolicy else {}))
            bar.set_postfix(loss=f"{loss:.3f}", accept=f"{acceptance:.3f}", **self._heldout(history))
            completed = step + 1
            if completed % config.log_every == 0 and accelerator.is_main_process:
                log.info("step %d loss %.4f expected acceptance %.4f", completed, loss, acceptance)
                accelerator.log({"train/loss": loss, "train/acceptance": acceptance,
                                 "train/lr": self.scheduler.get_last_lr()[0]}, step=completed)
            # Every process must agree to stop (a collective waits for all of them), and on the budget spent.
            now = time.monotonic()
            used = 1 - (deadline - now) / (config.max_minutes * 60) if config.max_minutes > 0 else 0.0
            flags = torch.tensor([now > deadline, stop.requested, used], dtype=torch.float, device=accelerator.device)
            late, stopping, used = accelerator.reduce(flags, "sum").tolist()
            late, stopping = late > 0, stopping > 0
            self.budget.used = min(used / accelerator.num_processes, 1.0)
            stopping = stopping and completed < config.steps  # a signal on any process stops them all
            done = completed >= config.steps or late or stopping
            if self.evaluator is not None and self.evaluator.due(completed, done) and not stopping:
                self.evaluate(history, completed)
                bar.set_postfix(loss=f"{loss:.3f}", accept=f"{acceptance:.3f}", **self._heldout(history))
            if completed % config.save_every == 0 or done:
                accelerator.wait_for_everyone()
                if accelerator.is_main_process:
                    save_checkpoint(checkpoint, self.draft, self.tokenizer, self.optimizer, completed, history)
                accelerator.wait_for_everyone()
            if done:
                return completed, stopping
        return completed, False

    def evaluate(self, history: list, completed: int) -> None:
        """Held-out figures into the step's history entry and the trackers; a new best α is exported."""
        best = best_alpha(history)
        figures = self.evaluator.run(self.draft)
        history[-1]["eval"] = figures
        log.info("step %d held-out alpha %.4f (greedy %.4f), predicted tau(k=4) %.2f", completed, figures["alpha"],
                 figures["alpha_greedy"], figures["predicted_tau"][3])
        scalars = {"eval/alpha": figures["alpha"], "eval/alpha_greedy": figures["alpha_greedy"]}
        scalars |= {f"eval/predicted_tau_k{k}": tau for k, tau in enumerate(figures["predicted_tau"], 1)}
        scalars |= {f"eval/alpha_position_{j}": a for j, a in enumerate(figures["alpha_per_position"], 1)}
        scalars |= {f"eval/{key}": figures[key] for key in ("measured_tau", "tokens_per_s") if key in figures}
        self.accelerator.log(scalars, step=completed)
        if figures["alpha"] > best and self.on_best is not None:
            self.on_best(figures)

    @staticmethod
    def _heldout(history: list) -> dict:
        last = last_eval(history)
        return {} if last is None else {"heldout": f"{last['alpha']:.3f}"}

    def step(self, step: int, onpolicy: bool = False) -> tuple[float, float]:
        """One optimizer step on the global batch; (loss, acceptance) per counted position."""
        config, accelerator = self.config, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        if onpolicy:
            mine = self.onpolicy.batch(self.draft, step, list(range(rank, config.batch_size, world)),
                                       config.batch_size, self.eos_ids)
        else:
            mine = self.rows.batch(step, config.batch_size, config.seed).rows(slice(rank, None, world))
        mine = mine.to(accelerator.device)
        # Each process scales its sum by the global count of counted positions: summed over
        # processes (DDP averages, hence * world), the gradient is that of the mean over every
        # counted position of the global batch.
        count = torch.tensor(float((mine.labels(hard=config.alpha < 1) != -100).sum()), device=accelerator.device)
        total = max(int(accelerator.reduce(count, "sum") if world > 1 else count), 1)
        size = mine.input_ids.shape[0] // config.grad_accum
        sums = torch.zeros(2, device=accelerator.device)
        for i in range(config.grad_accum):
            sync = i == config.grad_accum - 1 or world == 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(self.student):
                loss_sum, acceptance_sum, _ = distill_step(self.target, self.student,
                                                           mine.rows(slice(i * size, (i + 1) * size)), config,
                                                           accelerator.device)
                (loss_sum * world / total).backward()
            sums += torch.stack([loss_sum.detach().float(), acceptance_sum.detach()])
        sums = accelerator.reduce(sums, "sum") if world > 1 else sums
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, acceptance = (sums / total).tolist()
        return loss, acceptance
