"""Shared references for the engine's tests: HF greedy output, exact sampled distributions, and
the HTTP server's tiny setup."""

import contextlib
import time

import torch
from scipy.stats import chisquare
from specdistill.serve import AsyncEngine, SpeculativeGenerator
from specdistill.serve.config import ServeConfig
from specdistill.serve.server import build_app, serving_in_thread

from specdistill.models import prune_draft, tiny_llama


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


# ---- the HTTP server's tiny setup (test_server.py, test_admin_capture.py) ----

MODEL = "tiny"
CONTEXT = 96


def char_chat_tokenizer():
    """One token per character, with a decoder and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<eos>", "<unk>", *sorted(set("abcdefghijklmnopqrstuvwxyz _=():?\n"))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters back to back, no spaces between them
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    return tokenizer


def tiny_generator(tokenizer):
    target = tiny_llama(vocab_size=len(tokenizer), num_layers=3, max_positions=CONTEXT, seed=2)
    target.generation_config.eos_token_id = 0
    with torch.no_grad():  # a random model says <eos> too often for long answers: make it rarer
        target.lm_head.weight[0] = -target.lm_head.weight[2:].mean(0)
    return SpeculativeGenerator(target, prune_draft(target, [0, -1]), num_draft_tokens=3, tokenizer=tokenizer)


@contextlib.contextmanager
def running_server(generator, tokenizer, start_engine=True, **overrides):
    """The app on 127.0.0.1 in a thread; its engine steps in a thread of its own, or
    (``start_engine=False``) wherever the caller runs ``engine.run_forever()``."""
    config = ServeConfig(**({"max_batch_size": 8, "max_queue": 64, "max_tokens_limit": 64} | overrides))
    engine = AsyncEngine(generator.engine(config.max_batch_size), config.max_queue)
    app = build_app(engine, tokenizer, config, MODEL, start_engine=start_engine)
    with serving_in_thread(app, timeout=20) as url:
        yield url, engine


def slowed(generator, monkeypatch, seconds=0.05):
    """Each target forward takes ``seconds`` more, so a request is still running when a test acts."""
    real = generator.target_runner.forward

    def slow(*args):
        time.sleep(seconds)
        return real(*args)

    monkeypatch.setattr(generator.target_runner, "forward", slow)
