"""Check an exported EAGLE-3 head against vllm-project/speculators' own model class.

Two steps, in two environments (speculators pins its own transformers, so it gets a
virtualenv of its own; it needs no GPU and no vLLM):

    # 1. here: a head for the default target, and our training-time-test outputs on real text
    python bench/check_speculators.py make --head runs/spec-check        # or --head DIR of a trained head
    # 2. in a venv with `pip install speculators` (0.9.0 checked):
    python bench/check_speculators.py check --head runs/spec-check

``check`` loads the directory with ``speculators.models.eagle3.Eagle3DraftModel.from_pretrained``,
compares every tensor with ours, runs their training-time test (off-policy tokens, 3 steps)
on the same target features and tokens, and counts where their argmax equals ours.
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch


def make(head_dir: Path) -> None:
    from specdistill.models import load_target
    from specdistill.models.eagle3 import Eagle3Head, save_head
    from specdistill.models.eagle3_io import is_head_dir, load_head
    from specdistill.training.eagle3_head import target_pass

    target, tokenizer = load_target()
    if is_head_dir(head_dir):
        head = load_head(head_dir, target, torch.float32)
    else:
        torch.manual_seed(0)
        head = Eagle3Head.for_target(target, torch.arange(0, 49152, 6)[:8192])
        save_head(head, head_dir)
    text = (Path(__file__).parents[1] / "specdistill" / "eagle.py").read_text()
    ids = torch.tensor([tokenizer.encode(text)[:129]])  # their block masks want 128 positions
    with torch.no_grad():
        features, _ = target_pass(target, head, ids)
        steps = head.ttt_logits(features, ids, 3)
    torch.save({"ids": ids, "features": features, "embed": target.get_input_embeddings().weight.detach(),
                "steps": steps}, head_dir / "reference.pt")
    print(json.dumps({"head": str(head_dir), "reference": str(head_dir / "reference.pt")}))


def check(head_dir: Path, verifier: str) -> None:
    from safetensors.torch import load_file
    from speculators.models.eagle3 import Eagle3DraftModel

    reference = torch.load(head_dir / "reference.pt")
    if verifier:  # offline: speculators resolves the verifier named in the config; point it at a local copy
        local = Path(tempfile.mkdtemp())
        config = json.loads((head_dir / "config.json").read_text())
        config["speculators_config"]["verifier"]["name_or_path"] = verifier
        (local / "config.json").write_text(json.dumps(config))
        shutil.copy(head_dir / "model.safetensors", local / "model.safetensors")
        head_dir = local
    model = Eagle3DraftModel.from_pretrained(str(head_dir)).eval()
    ours, theirs = load_file(head_dir / "model.safetensors"), model.state_dict()
    equal = all(torch.equal(theirs[key].to(value.dtype), value) for key, value in ours.items())
    with torch.no_grad():
        model.embed_tokens.weight.copy_(reference["embed"])  # the target's, which the head does not store
        ids, features = reference["ids"], reference["features"]
        # Their index i holds our slot c = i: target features at c with token c + 1.
        drafts = model(features[:, :-1], ids[:, 1:], torch.zeros_like(ids[:, 1:]), ttt_steps=3,
                       use_off_policy_tokens=True)
    agree = []
    for j in range(3):
        n = ids.shape[1] - 2 - j  # slots whose step-j token exists
        agree.append(round(float((drafts[j][0, :n] == reference["steps"][j][0, :n].argmax(-1)).float().mean()), 4))
    print(json.dumps({"tensors": len(ours), "weights_equal": equal, "argmax_agreement_per_step": agree,
                      "draft_vocab_size": model.config.draft_vocab_size,
                      "layer_ids": model.config.eagle_aux_hidden_state_layer_ids}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["make", "check"])
    parser.add_argument("--head", default="runs/spec-check", help="the head directory")
    parser.add_argument("--verifier", default=str(Path.home() / ".cache/specdistill/smollm2-135m-instruct"),
                        help="check: a local copy of the target, for machines without hub access ('' = as named)")
    args = parser.parse_args()
    make(Path(args.head)) if args.step == "make" else check(Path(args.head), args.verifier)
