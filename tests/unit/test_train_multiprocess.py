"""Multi-process training (torchrun, gloo DDP on CPU) gives the weights of one process
with the same global batch; so does gradient accumulation."""

import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from specdistill.models import prune_draft, tiny_llama
from specdistill.training.config import TrainConfig
from specdistill.training.trainer import train


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory, char_tokenizer):
    folder = tmp_path_factory.mktemp("tiny_target")
    model = tiny_llama(vocab_size=len(char_tokenizer), num_layers=3, hidden_size=32, seed=4)
    model.save_pretrained(folder)
    char_tokenizer.save_pretrained(folder)
    text = "def add(a, b):\n    return a + b\n\nprint(add(x, y))\n" * 60
    (folder / "corpus.txt").write_text(text)
    return folder


def _flags(target_dir, out, **overrides):
    values = dict(target=str(target_dir), data=str(target_dir / "corpus.txt"), output_dir=str(out), steps=6,
                  batch_size=4, seq_len=32, lr=3e-3, warmup_steps=1, keep_layers="0,-1", save_every=3,
                  device="cpu", bf16=False) | overrides
    return values


def _weights(out):
    return load_file(str(out / "final" / "model.safetensors"))


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_and_grad_accumulation_reach_the_weights_of_one(tmp_path, target_dir):
    single = train(TrainConfig(**_flags(target_dir, tmp_path / "one")), progress=False)
    assert single["steps"] == 6
    train(TrainConfig(**_flags(target_dir, tmp_path / "accum", grad_accum=2)), progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", *_cli(_flags(target_dir, tmp_path / "two"))[2:]]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])  # printed once, by the main process
    assert summary["processes"] == 2 and summary["steps"] == 6
    one, accum, two = _weights(tmp_path / "one"), _weights(tmp_path / "accum"), _weights(tmp_path / "two")
    for name, weight in one.items():
        torch.testing.assert_close(two[name], weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(accum[name], weight, rtol=1e-4, atol=1e-5)
    start = prune_draft(AutoModelForCausalLM.from_pretrained(target_dir), [0, -1]).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert (one[name] - start[name]).abs().max() > 1e-3  # it trained
    assert (tmp_path / "two" / "checkpoint" / "trainer_state.pt").exists()


def test_batch_must_split_evenly(tmp_path, target_dir):
    with pytest.raises(ValueError, match="split evenly"):
        train(TrainConfig(**_flags(target_dir, tmp_path / "odd", batch_size=3, grad_accum=2)), progress=False)


def _cli(flags: dict) -> list[str]:
    args = []
    for name, value in flags.items():
        flag = name.replace("_", "-")
        args += [f"--{flag}"] if value is True else [f"--no-{flag}"] if value is False else [f"--{flag}", str(value)]
    return [sys.executable, "-m", "specdistill.cli", "train", *args]


def test_sigkill_at_a_random_moment_then_restart_ends_with_the_uninterrupted_weights(tmp_path, target_dir):
    """SIGKILL while it trains and saves (a checkpoint every 5 of 300 steps, ~2 s in all),
    at a random moment after the first save began; the restarted run resumes and ends
    where an uninterrupted one does."""
    flags = _flags(target_dir, tmp_path / "killed", steps=300, save_every=5)
    whole = _weights(Path(train(TrainConfig(**_flags(target_dir, tmp_path / "whole", steps=300, save_every=5)),
                                progress=False)["draft_dir"]).parent)
    delay = random.uniform(0.0, 1.0)
    process = subprocess.Popen(_cli(flags), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "killed"
    deadline = time.monotonic() + 120
    while not any((run / name).exists() for name in ("checkpoint", "checkpoint.tmp")) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before the kill; lengthen it"
    rerun = subprocess.run(_cli(flags), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, (delay, rerun.stderr[-3000:])
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 300 and summary["resumed_from_step"] % 5 == 0
    print(f"killed {delay:.2f} s after the first save began; resumed at step {summary['resumed_from_step']}")
    killed = _weights(run)
    for name, weight in whole.items():
        torch.testing.assert_close(killed[name], weight, rtol=1e-4, atol=1e-5,
                                   msg=f"killed {delay:.2f} s after the first save; resumed at "
                                       f"{summary['resumed_from_step']}")
