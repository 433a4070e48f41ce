"""Shared references for the engine's tests: HF greedy output, exact sampled distributions."""

import torch
from scipy.stats import chisquare


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
