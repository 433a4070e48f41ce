#!/bin/sh
# v9 (shipped in session 22): v8 trained on v9's data (everyday chat, translation both ways, summarization, qa and
# retrieval over documents, extraction, math; the target's greedy answers) with v4 replayed as 40% of the records
# (its Python chat and code keep the chat the head was made for).
exec .venv/bin/specdistill train --draft-type eagle3 --draft default \
  --data bench/data/default-draft-train-v9.jsonl.gz --replay bench/data/default-draft-train-v4.jsonl.gz \
  --replay-share 0.4 --head-vocab-size 12288 --seq-len 2048 --batch-size 4 --lr 3e-4 --warmup-steps 5 \
  --ttt-steps 4 --ttt-decay 0.6 --feature-cache runs/v9/features --output-dir runs/v9/head \
  --steps ${STEPS:-200} --max-minutes ${MINUTES:-40} --save-every 10 --log-every 5 --report-to none
