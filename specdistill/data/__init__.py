"""Data: local corpora, HF dataset records, token rows and batches, prompt files and the built-in prompt
sets, JSONL helpers. No model runs here."""
