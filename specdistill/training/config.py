"""``TrainConfig``: every setting of ``specdistill train`` (the data settings are ``DataConfig``'s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from specdistill.losses import DIVERGENCES
from specdistill.models.drafts import DEFAULT_DRAFT
from specdistill.options import option
from specdistill.training.eagle3_head import check_head_config
from specdistill.training.sources import DataConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(DataConfig):
    """Distill a draft for a target. Each field is a flag of `specdistill train`."""

    draft_type: str = option("lm", "lm: a causal-LM draft (pruned from the target, or --draft); eagle3: an "
                                   "EAGLE-3 head on the target's hidden states, trained with training-time test")
    draft: str = option("", "a local HF draft directory (or, for eagle3, a head directory, or default: the "
                            "shipped head) to start from; empty = prune the target (lm) or a new head (eagle3)")
    head_layers: str = option("", "eagle3: the target hidden states the head reads (empty = low, middle, high)")
    head_vocab_size: int = option(8192, "eagle3: the head's draft vocabulary (the answers' most frequent tokens); "
                                        "fine-tuning a head (--draft), a larger size adds the most frequent answer "
                                        "tokens it lacks (new languages, say)")
    ttt_steps: int = option(4, "eagle3: training-time test unrolls the head this many draft positions")
    freeze_lm_head: bool = option(False, "eagle3: keep the head's LM head (its draft-vocabulary rows) as it starts; "
                                         "only the feature projection and the layer learn: 5-17% more steps on a "
                                         "2-core CPU, and a fine-tuned head keeps its top-5 on other traffic")
    blend_start: float = option(0.0, "eagle3 fine-tune (--draft): the exported final head's weights are this share "
                                     "its starting head's, the rest the fine-tuned ones' (WiSE-FT): it keeps more "
                                     "of what it knew (other traffic) for a little of what it learned")
    ttt_decay: float = option(1.0, "eagle3: draft position j's loss weighs ttt_decay ** (j - 1)")
    feature_cache: str = option("", "eagle3: a directory for the target's features over the training rows, made "
                                    "once and read by every step instead of running the target (in `adapt`: "
                                    "per-record target states, shared by runs and cycles)", resumable=True)
    keep_layers: str = option("0,1,2,-1", "target layers the pruned draft keeps (negative = from the end)")
    output_dir: str = option("runs/draft", "checkpoints, logs and the exported draft (final/, best/) go here")
    teacher_cache: str = option("", "a top-k teacher cache from `specdistill cache-teacher`: its rows and teacher "
                                    "log-probs replace data and the live target")
    onpolicy_fraction: float = option(0.0, "share of steps that train on the draft's own continuations of prompts")
    onpolicy_temperature: float = option(1.0, "sampling temperature of those continuations")
    onpolicy_tokens: int = option(128, "tokens the draft writes per on-policy row")
    batch_size: int = option(8, "the global batch (rows per step, over all processes)")
    grad_accum: int = option(1, "micro-batches per process per step (same result, less memory)", resumable=True)
    steps: int = option(200, "optimizer steps in all (a resumed run continues up to this)", resumable=True)
    max_minutes: float = option(0.0, "stop earlier after this much wall time (0 = no limit); the lr decays over it too",
                               resumable=True)
    lr: float = option(5e-4, "peak AdamW learning rate, after warmup (cosine decay to 10%)")
    warmup_steps: int = option(10, "linear warmup steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    divergence: str = option("fkl", "fkl, rkl, jsd, tvd or skl")
    beta: float = option(0.5, "mixture weight of jsd and skl")
    alpha: float = option(1.0, "weight of the soft term; 1 - alpha goes to cross entropy on the text")
    train_embeddings: bool = option(False, "train the embeddings and LM head too (default: frozen, as the target's)")
    lora_rank: int = option(0, "train LoRA adapters of this rank (peft) instead of the weights; 0 = full weights")
    lora_alpha: float = option(16.0, "LoRA scale numerator (the update is scaled by lora_alpha / lora_rank)")
    lora_targets: str = option("all-linear", "modules that get adapters: 'all-linear' or names, e.g. q_proj,v_proj")
    fused_linear: bool = option(True, "loss from hidden states + LM heads, chunked: no [B, T, V] logits")
    eval_every: int = option(0, "every N steps (and at the end), measure alpha on held-out prompts (0 = never)",
                             resumable=True)
    eval_prompts: int = option(12, "held-out chat prompts the eval uses (never trained on)")
    eval_decode: int = option(0, "also decode this many held-out prompts with the draft: measured tau and tokens/s",
                              resumable=True)
    save_every: int = option(50, "write a checkpoint every N steps", resumable=True)
    log_every: int = option(10, "log loss and acceptance every N steps", resumable=True)
    report_to: str = option("tensorboard", "accelerate trackers for loss and held-out figures (logs in output_dir), "
                                           "or none", resumable=True)

    def __post_init__(self):
        super().__post_init__()
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        for name in ("batch_size", "grad_accum", "steps", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0 <= self.onpolicy_fraction <= 1:
            raise ValueError(f"onpolicy_fraction must be in [0, 1], got {self.onpolicy_fraction}")
        if self.onpolicy_tokens < 1 or not self.onpolicy_temperature >= 0:
            raise ValueError("onpolicy_tokens must be >= 1 and onpolicy_temperature >= 0")
        if self.lora_rank < 0 or not self.lora_alpha > 0:
            raise ValueError(f"lora_rank must be >= 0 and lora_alpha > 0, got {self.lora_rank} and {self.lora_alpha}")
        if self.eval_every < 0 or self.eval_decode < 0 or self.eval_prompts < 1:
            raise ValueError("eval_every and eval_decode must be >= 0 and eval_prompts >= 1")
        if self.lora_rank and self.train_embeddings:
            raise ValueError("train_embeddings and lora_rank exclude each other: LoRA trains its adapters only")
        if self.onpolicy_fraction > 0 and self.alpha == 0:
            raise ValueError("on-policy batches need a teacher distribution to score the draft's text: alpha > 0")
        if self.draft_type not in ("lm", "eagle3"):
            raise ValueError(f"draft_type must be lm or eagle3, got {self.draft_type!r}")
        if self.draft_type == "eagle3":
            check_head_config(self)
        elif self.freeze_lm_head or self.blend_start:
            raise ValueError("freeze_lm_head and blend_start are for EAGLE-3 heads (draft_type eagle3); an lm "
                             "draft's LM head is frozen already unless train_embeddings")
        elif self.feature_cache:
            raise ValueError("feature_cache holds an EAGLE-3 head's features: use it with draft_type eagle3")
        elif self.draft == DEFAULT_DRAFT:
            raise ValueError("--draft default is the shipped EAGLE-3 head: fine-tune it with --draft-type eagle3")
        if self.teacher_cache and (self.onpolicy_fraction > 0 or self.eval_every > 0):
            raise ValueError("onpolicy_fraction and eval_every need the live target to score the draft's own text; "
                             "set them to 0 with teacher_cache")
