"""How many answer tokens would a corpus n-gram datastore (the target's own training answers) draft
correctly, beyond the in-context ngram branch? Teacher-forced over held-out target answers."""
import gzip, json, sys, time
import numpy as np
sys.path.insert(0, "/work/main")
from specdistill.serve.model_free import continuation

import glob
pieces = []
for f in glob.glob("/work/main/runs/adapt-s19/capture/*.jsonl"):
    for line in open(f):
        r = json.loads(line)
        pieces.append(np.asarray(r["answer_ids"] + [-1], dtype=np.int64))
corpus = np.concatenate(pieces)
print("corpus tokens", len(corpus))

def build(n):
    w = np.lib.stride_tricks.sliding_window_view(corpus, n)
    ok = (w >= 0).all(1) & np.r_[corpus[n:] >= 0, False]  # the n-gram and its next token inside one record
    h = np.zeros(len(w), dtype=np.uint64)
    for i in range(n):
        h = h * np.uint64(1000003) + w[:, i].astype(np.uint64)
    pos = np.flatnonzero(ok)
    order = np.argsort(h[pos], kind="stable")
    return h[pos][order], pos[order]

t = time.time()
SIZES = (5, 4, 3, 2)
index = {n: build(n) for n in SIZES}
print("index built in %.1fs" % (time.time() - t))

def lookup(tokens, k, min_support=1):
    for n in SIZES:
        if len(tokens) < n:
            continue
        h = np.uint64(0)
        for x in tokens[-n:]:
            h = h * np.uint64(1000003) + np.uint64(x)
        keys, pos = index[n]
        lo, hi = np.searchsorted(keys, h), np.searchsorted(keys, h, side="right")
        if hi - lo < min_support:
            continue
        starts = pos[lo:hi] + n
        out = []
        for _ in range(k):  # walk: the majority next token among the matches that agree so far
            nxt = corpus[starts]
            good = nxt >= 0
            starts, nxt = starts[good], nxt[good]
            if not len(nxt):
                break
            vals, counts = np.unique(nxt, return_counts=True)
            best = vals[counts.argmax()]
            if counts.max() < min_support or counts.max() / len(nxt) < 0.3:
                break
            out.append(int(best))
            starts = starts[nxt == best] + 1
        if out:
            return out
    return []

def accepted(cand, truth):
    a = 0
    for c, t in zip(cand, truth):
        if c != t:
            break
        a += 1
    return a

recs = json.load(open("/tmp/probe/answers_transl.json"))
K = 8
by = {}
for r in recs:
    p, ans = r["prompt_ids"], r["answer_ids"]
    s = by.setdefault(r["category"], np.zeros(5))
    for t in range(len(ans) - 1):
        toks = p + ans[:t]
        truth = ans[t:t + K]
        a_ctx = accepted(continuation(toks, len(toks), range(4, 1, -1), K, True), truth)
        a_cor = accepted(lookup(toks, K), truth)
        s += [1, a_ctx, a_cor, max(a_ctx, a_cor), (a_cor > 0) & (a_ctx == 0)]
tot = np.zeros(5)
print(f"{'category':14} {'pos':>5} {'ctx':>6} {'corpus':>7} {'best':>6} {'new':>6}")
for c, s in by.items():
    tot += s
    print(f"{c:14} {int(s[0]):5d} {s[1]/s[0]:6.3f} {s[2]/s[0]:7.3f} {s[3]/s[0]:6.3f} {s[4]/s[0]:6.3f}")
print(f"{'all':14} {int(tot[0]):5d} {tot[1]/tot[0]:6.3f} {tot[2]/tot[0]:7.3f} {tot[3]/tot[0]:6.3f} {tot[4]/tot[0]:6.3f}")

# ---- marginal gain over the head's greedy chain (teacher-forced, up to 6) ----
import torch
from specdistill.models import load_target
from specdistill.models.drafts import load_draft
from specdistill.training.eagle3_head import target_pass
target, _ = load_target("smollm2-135m", dtype=torch.float32)
head, _ = load_draft("default", target, torch.float32)
by2 = {}
walk = {}
with torch.inference_mode():
    for r in recs:
        p, ans = r["prompt_ids"], r["answer_ids"]
        ids = torch.tensor([p + ans])
        feats, logits = target_pass(target, head, ids)
        targ = logits.argmax(-1)[0]  # the target's greedy token after each position
        drafts = [head.draft_ids[l.argmax(-1)][0] for l in head.ttt_logits(feats, ids, 6)]
        s = by2.setdefault(r["category"], np.zeros(5))
        per = []
        L = len(p)
        for t in range(len(ans) - 1):
            c = L + t - 2  # head's block at c drafts token c + 2 = ans[t] first
            a_head = 0
            for j in range(6):
                if t + j >= len(ans) or c + j + 1 >= ids.shape[1] or int(drafts[j][c]) != int(targ[c + j + 1]) or int(targ[c + j + 1]) != ans[t + j]:
                    break
                a_head += 1
            toks = p + ans[:t]
            truth = ans[t:t + K]
            a_ctx = accepted(continuation(toks, len(toks), range(4, 1, -1), K, True), truth)
            a_cor = accepted(lookup(toks, K), truth)
            s += [1, a_head, max(a_head, a_ctx), max(a_head, a_ctx, a_cor), a_cor > max(a_head, a_ctx)]
            ctx_c = continuation(toks, len(toks), range(4, 1, -1), K, True)
            a_fill = a_ctx if ctx_c else a_cor
            per.append((a_head, max(a_head, a_ctx), max(a_head, a_fill)))
        for m in range(3):
            t, steps = 0, 0
            while t < len(per):
                t += per[t][m] + 1; steps += 1
            walk.setdefault(r['category'], np.zeros(4))[m + 1] += steps
        walk[r['category']][0] += len(per)
tot = np.zeros(5)
print(f"{'category':14} {'pos':>5} {'head':>6} {'+ctx':>7} {'+corpus':>8} {'gain':>6}")
for c, s in by2.items():
    tot += s
    print(f"{c:14} {int(s[0]):5d} {s[1]/s[0]:6.3f} {s[2]/s[0]:7.3f} {s[3]/s[0]:8.3f} {s[4]/s[0]:6.3f}")
print(f"{'all':14} {int(tot[0]):5d} {tot[1]/tot[0]:6.3f} {tot[2]/tot[0]:7.3f} {tot[3]/tot[0]:8.3f} {tot[4]/tot[0]:6.3f}")

print('walk tau: head chain6 / +ctx / +corpus')
for c, w in walk.items():
    print(f"{c:14} {w[0]/w[1]:6.2f} {w[0]/w[2]:6.2f} {w[0]/w[3]:6.2f}")
w = sum(walk.values()); print(f"{'all':14} {w[0]/w[1]:6.2f} {w[0]/w[2]:6.2f} {w[0]/w[3]:6.2f}")
print('mean of tasks', np.mean([w[0]/w[1] for w in walk.values()]), np.mean([w[0]/w[2] for w in walk.values()]), np.mean([w[0]/w[3] for w in walk.values()]))
