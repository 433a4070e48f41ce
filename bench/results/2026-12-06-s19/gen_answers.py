"""Target greedy answers to the first 5 prompts per category of broad-heldout (bf16 HF generate)."""
import json, sys, torch
sys.path.insert(0, "/work/main")
from specdistill.data.prompts import read_conversations, by_category
from specdistill.measure import answer_turns
from specdistill.models import load_target
target, tok = load_target("smollm2-135m", dtype=torch.bfloat16)
groups = by_category(read_conversations("/work/main/bench/prompts/broad-heldout.jsonl"))
out = []
for cat, convs in groups.items():
    for conv in convs[5:10]:  # prompts 6-10: not the ones the bench reports (first 5)
        def answer(ids):
            o = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
            out.append({"category": cat, "prompt_ids": ids[0].tolist(), "answer_ids": o[0, ids.shape[1]:].tolist()})
            return o[0, ids.shape[1]:].tolist()
        with torch.inference_mode():
            answer_turns(tok, conv, answer)
    print(cat, len(out), flush=True)
json.dump(out, open("/tmp/probe/answers.json", "w"))
