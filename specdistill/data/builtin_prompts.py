"""The prompt sets the project writes itself (no data downloads): ``builtin:python``,
``builtin:stdlib``, ``builtin:code`` and ``builtin:written``. None holds a held-out prompt;
``training_prompts()`` are the prompts whose target answers drafts train on.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from specdistill.data.prompt_mining import stdlib_code_prompts
from specdistill.data.prompts import HELDOUT_PROMPTS, read_prompts

# Training prompts: the same kind of requests as the held-out ones (Python help in a
# chat), with different tasks. A test checks that none is a held-out prompt.
_FUNCTION_TASKS = [
    "reverses a string", "returns the largest number in a list", "checks whether a number is prime",
    "computes the factorial of n", "sorts a dictionary by its values", "flattens a nested list",
    "counts the vowels in a string", "converts Celsius to Fahrenheit", "finds the second largest number in a list",
    "checks whether two strings are anagrams", "returns the greatest common divisor of two numbers",
    "capitalizes the first letter of every word", "computes the average of a list of numbers",
    "removes all whitespace from a string", "returns the intersection of two lists", "checks if a year is a leap year",
    "converts a binary string to an integer", "finds all even numbers in a list", "returns the median of a list",
    "splits a list into chunks of size n", "counts how often each character appears in a string",
    "validates an email address with a regular expression", "transposes a matrix given as a list of lists",
    "returns the n largest items of a list", "rotates a list by k positions", "computes the sum of the digits of n",
    "checks whether a list is sorted", "generates all permutations of a string", "finds the longest word in a sentence",
    "converts a list of tuples into a dictionary", "implements binary search on a sorted list",
    "returns the prime factors of a number", "removes the punctuation from a string",
    "computes compound interest", "reads a JSON file and returns its contents", "finds missing numbers in a range",
    "implements bubble sort", "returns the running total of a list", "checks whether brackets are balanced",
    "converts a Roman numeral to an integer",
]
_CONCEPTS = [
    "a dictionary", "a set", "a generator", "a lambda function", "the `*args` and `**kwargs` parameters",
    "exception handling with try and except", "the `if __name__ == '__main__'` idiom", "a virtual environment",
    "type hints", "f-strings", "the difference between `==` and `is`", "slicing", "a class method",
    "a static method", "inheritance", "the `enumerate` function", "the `zip` function", "a context manager",
    "recursion", "mutable and immutable types", "the global interpreter lock", "a dataclass", "an iterator",
    "the `map` and `filter` functions", "a module and a package", "string formatting", "a shallow and a deep copy",
    "the `pathlib` module", "unit tests with `unittest`", "the `collections.Counter` class",
]
_HOWTOS = [
    "sort a list of dictionaries by a key", "write text to a file", "make an HTTP request",
    "measure how long a function takes", "parse command-line arguments", "join a list of strings",
    "check if a file exists", "convert a string to a date", "generate a random number", "copy a file",
    "iterate over two lists at the same time", "reverse a list", "get the keys of a dictionary",
    "handle a division by zero", "read a file line by line", "find the index of an item in a list",
    "create a directory", "convert a list to a string", "round a number to two decimals",
    "get user input from the keyboard", "list the files in a folder", "run a function in a thread",
    "split a string on commas", "format a number with thousands separators", "sort a list in descending order",
]
_FUNCTION_STYLES = ["Write a Python function that {}.", "Write a short Python function that {}.",
                    "Show me Python code that {}.", "Can you write a Python function which {}?"]
_CONCEPT_STYLES = ["Explain {} in Python.", "What is {} in Python? Give an example.",
                   "Explain {} in Python with a short example.", "When should I use {} in Python?"]
_HOWTO_STYLES = ["How do I {} in Python?", "How can I {} in Python? Show an example.",
                 "What is the best way to {} in Python?"]


def training_prompts(seed: int = 0) -> list[str]:
    """About 380 Python chat prompts, in a fixed shuffled order, none of them held out."""
    prompts = [style.format(item) for items, styles in ((_FUNCTION_TASKS, _FUNCTION_STYLES),
                                                          (_CONCEPTS, _CONCEPT_STYLES), (_HOWTOS, _HOWTO_STYLES))
               for item in items for style in styles]
    prompts = [p for p in prompts if p not in HELDOUT_PROMPTS]
    random.Random(seed).shuffle(prompts)
    return prompts


# Standard-library help: what a module is for, and how to do one thing with it.
_STDLIB_STYLES = ["What is the Python module `{}` for? Show a short example.",
                  "Give a short example of using the `{}` module in Python and explain it.",
                  "When would I use Python's `{}` module instead of writing it myself?"]


def stdlib_prompts(seed: int = 0) -> list[str]:
    """About 500 prompts on the public standard-library modules of this Python."""
    modules = sorted(name for name in sys.stdlib_module_names if not name.startswith("_"))
    prompts = [style.format(name) for name in modules for style in _STDLIB_STYLES]
    prompts = [p for p in random.Random(seed).sample(prompts, len(prompts)) if p not in HELDOUT_PROMPTS]
    return prompts[:500]


def code_prompts(seed: int = 0) -> list[str]:
    """2,200 "write/explain this function" prompts made from this Python's library."""
    return stdlib_code_prompts(seed)


def written_prompts(seed: int = 0) -> list[str]:
    """Prompts the default target wrote itself (``make-prompts --source target``), shipped as text."""
    path = Path(__file__).parents[1] / "prompt_sets" / "target-written.txt"
    return [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and line not in HELDOUT_PROMPTS]


PROMPT_SETS = {"builtin:python": training_prompts, "builtin:stdlib": stdlib_prompts, "builtin:code": code_prompts,
               "builtin:written": written_prompts}


def builtin_prompt_set(name: str) -> list[str]:
    """``builtin`` (the chat sets: python and stdlib) or one of ``PROMPT_SETS``; never a held-out prompt."""
    if name == "builtin":
        return training_prompts() + stdlib_prompts()
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; the project ships builtin, {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]()


def prompt_texts(spec: str) -> list[str]:
    """The prompts of a comma-separated list of built-in sets (``builtin``, ``builtin:python``...)
    and prompt files, in order."""
    texts = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        texts += builtin_prompt_set(part) if part.startswith("builtin") else read_prompts(part)
    if not texts:
        raise ValueError(f"no prompts in {spec!r}")
    return texts
