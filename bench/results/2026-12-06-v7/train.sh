#!/bin/sh
# v7: the shipped head (v6) fine-tuned on everyday chat, translation and extraction, replaying v4.
STEPS=${STEPS:-1}
exec .venv/bin/specdistill train --draft-type eagle3 --draft default \
  --data bench/data/default-draft-train-v7.jsonl.gz --replay bench/data/default-draft-train-v4.jsonl.gz \
  --replay-share 0.25 --head-vocab-size 12288 --seq-len 2048 --batch-size 4 --lr 5e-4 --warmup-steps 5 \
  --ttt-steps 4 --ttt-decay 0.6 --feature-cache runs/v7/features --output-dir runs/v7/head \
  --steps $STEPS --max-minutes ${MINUTES:-120} --eval-every 60 --save-every 10 --log-every 5 --report-to none
