import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from specdistill.models import tiny_pair


@pytest.fixture(scope="session")
def tiny_models():
    """A tiny random (target, draft) pair sharing a 64-token vocabulary."""
    return tiny_pair(vocab_size=64, seed=0)


@pytest.fixture(scope="session")
def char_tokenizer():
    """A real fast tokenizer with one token per character (lowercase code and prose)."""
    vocab = {c: i for i, c in enumerate(["<eos>", "<unk>", *sorted(set("abcdefghijklmnopqrstuvwxyz _=():?\n"))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture()
def killed_after(monkeypatch):
    """``with killed_after(n): train(...)``: the run dies (KeyboardInterrupt) in its step n + 1,
    after n distillation steps; the real step is back once the block ends."""
    import contextlib

    from specdistill.training import loop as train_loop

    @contextlib.contextmanager
    def kill(steps: int):
        real, calls = train_loop.distill_step, []

        def dies(*args):
            calls.append(1)
            if len(calls) > steps:
                raise KeyboardInterrupt
            return real(*args)

        monkeypatch.setattr(train_loop, "distill_step", dies)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(train_loop, "distill_step", real)

    return kill
