"""Prompt files, chat formatting and the built-in prompt sets (``specdistill.data.prompts`` and
``specdistill.data.builtin_prompts``), re-exported where users import them."""

from specdistill.data.builtin_prompts import PROMPT_SETS, builtin_prompt_set, prompt_texts, training_prompts
from specdistill.data.prompts import HELDOUT_PROMPTS, chat_ids, chat_prompt_ids, read_prompt_records, read_prompts

__all__ = ["HELDOUT_PROMPTS", "PROMPT_SETS", "builtin_prompt_set", "chat_ids", "chat_prompt_ids", "prompt_texts",
           "read_prompt_records", "read_prompts", "training_prompts"]
