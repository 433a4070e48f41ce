#!/bin/sh
# v8: v7 (v6 + 170 steps on everyday chat, translation, extraction) trained on for more steps, with v4
# replayed as 40% of the records (v7: 25%) so that the other tasks are kept.
exec .venv/bin/specdistill train --draft-type eagle3 --draft runs/v7/head/final \
  --data bench/data/default-draft-train-v7.jsonl.gz --replay bench/data/default-draft-train-v4.jsonl.gz \
  --replay-share 0.4 --head-vocab-size 12288 --seq-len 2048 --batch-size 4 --lr 3e-4 --warmup-steps 5 \
  --ttt-steps 4 --ttt-decay 0.6 --feature-cache runs/v8/features --output-dir runs/v8/head \
  --steps ${STEPS:-200} --max-minutes ${MINUTES:-55} --eval-every 100 --save-every 10 --log-every 5 --report-to none
