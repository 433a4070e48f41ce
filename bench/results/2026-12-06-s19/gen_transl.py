import json, sys, torch
sys.path.insert(0, "/work/main"); sys.path.insert(0, "/work/main/bench")
from bench_adapt import domain_prompts
from specdistill.data.prompts import read_conversations, by_category, Conversation
from specdistill.measure import answer_turns
from specdistill.models import load_target
target, tok = load_target("smollm2-135m", dtype=torch.bfloat16)
captured, generated = domain_prompts("translation", 1064, 20, 0)
heldout = by_category(read_conversations("/work/main/bench/prompts/broad-heldout.jsonl"))["translation"]
out = []
for label, convs in (("generated", [Conversation.of(p) for p in generated]), ("handwritten", heldout)):
    for conv in convs:
        def answer(ids):
            o = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
            out.append({"category": label, "prompt_ids": ids[0].tolist(), "answer_ids": o[0, ids.shape[1]:].tolist()})
            return o[0, ids.shape[1]:].tolist()
        with torch.inference_mode():
            answer_turns(tok, conv, answer)
json.dump(out, open("/tmp/probe/answers_transl.json", "w"))
print(len(out))
