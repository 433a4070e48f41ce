"""Prompt sets the project writes itself (no data downloads).

``HELDOUT_PROMPTS`` are only ever used to measure drafts, never to train them.
"""

from __future__ import annotations

HELDOUT_PROMPTS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a list and a tuple in Python.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "How do I read a CSV file in Python and print each row?",
    "Write a Python class for a simple stack with push, pop and peek.",
    "What does the `with` statement do in Python? Give an example.",
    "Write a function that counts the words in a text file.",
    "Explain what a Python decorator is, with a short example.",
    "Write a Python function to merge two sorted lists.",
    "How can I remove duplicates from a list while keeping the order?",
    "Write a Python script that prints the current date and time.",
    "Explain list comprehensions in Python with two examples.",
]


def chat_prompt_ids(tokenizer, prompt: str):
    """Token ids [1, L] of a single-turn chat prompt, ready for the assistant's answer."""
    messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        return encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]
