"""Training: the config, the loop and its step, batch sources (fixed text, target answers, on-policy),
teacher sources (live target, top-k cache, a head's feature cache), checkpoints and graceful stop, LoRA,
held-out evaluation and the model card."""
