"""Shared references for the engine's tests: HF greedy output, exact sampled distributions."""

import torch
from scipy.stats import chisquare


def sharp_tiny_target():
    """A tiny random target over 16 tokens whose head is sharpened, so drafts get accepted at times."""
    from specdistill.models import tiny_llama

    model = tiny_llama(vocab_size=16, num_layers=4, hidden_size=32, seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(6)
    return model


def tiny_head(target):
    """A random EAGLE-3 head for ``sharp_tiny_target``: draft vocabulary 2..15, features of layers 0, 2, 3."""
    from specdistill.models.eagle3 import Eagle3Head

    return Eagle3Head.for_target(target, torch.arange(2, 16), layer_ids=[0, 2, 3], seed=1)


def hf_greedy(target, ids, n):
    # eos_token_id=None and min_new_tokens=n: exactly n tokens, like eos_token_id=[] below.
    return target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, eos_token_id=None, pad_token_id=1)


def exact_joint(target, prompt, vocab, warpers):
    """P(x1, x2 | prompt) under the warped target, by enumeration, using HF's own warpers."""
    def next_probs(ids):
        logits = target(ids).logits[:, -1].float()
        return warpers(ids, logits).softmax(-1)[0]

    with torch.no_grad():
        p1 = next_probs(prompt)
        joint = torch.zeros(vocab, vocab, dtype=torch.float64)
        for x1 in range(vocab):
            p2 = next_probs(torch.cat([prompt, torch.tensor([[x1]])], dim=1))
            joint[x1] = p1[x1].double() * p2.double()
    return joint.flatten()


def sampled_pairs(gen, prompt, vocab, samples):
    """Counts of (x1, x2) over ``samples`` seeded two-token generations, and the merged stats."""
    counts, stats = torch.zeros(vocab * vocab, dtype=torch.float64), None
    for seed in range(samples):
        out = gen.generate(prompt, max_new_tokens=2, temperature=1.0, seed=seed, eos_token_id=[])
        x1, x2 = out.sequences[0, prompt.shape[1]:].tolist()
        counts[x1 * vocab + x2] += 1
        stats = out.stats if stats is None else stats.merge(out.stats)
    return counts, stats


def assert_follows(counts, expected):
    samples = counts.sum()
    support = expected > 0
    assert counts[~support].sum() == 0  # nothing outside top-k / top-p
    # Pool rare cells so the chi-square approximation holds.
    big = expected[support] * samples >= 5
    obs = torch.cat([counts[support][big], counts[support][~big].sum().reshape(1)])
    exp = torch.cat([expected[support][big], expected[support][~big].sum().reshape(1)]) * samples
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    assert chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3
