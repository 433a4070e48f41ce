import random
import re

import pytest

from specdistill.data.jsonl import read_rows
from specdistill.data.math_problems import math_problems
from specdistill.data.task_prompts import FOLLOW_UPS, TASKS, mixed_prompts, module_docs, parse_mix, task_prompts
from specdistill.teacher.make_prompts import MakePromptsConfig, run_make_prompts

SENTENCE = "The parser reads each line of the file and stores the values it finds in a table."


@pytest.fixture()
def library(tmp_path):
    """A folder of documented modules, one with a long documentation."""
    for m in range(6):
        functions = "".join(
            f'def tool_{m}_{f}(path, size={f}):\n    """{SENTENCE} It returns the number {f} of module {m}.\n\n'
            f'    {"More words about how it works in detail. " * (12 if m == 0 else 2)}"""\n\n\n'
            for f in range(8 if m == 0 else 3))
        (tmp_path / f"mod{m}.py").write_text(f'"""Module {m} handles files. {SENTENCE}"""\n\n{functions}'
                                             'def _private():\n    """Hidden."""\n')
    (tmp_path / "nodoc.py").write_text("def f():\n    pass\n")
    return tmp_path


def test_module_docs_keep_documented_public_entries(library):
    docs = module_docs(sorted(library.glob("*.py")))
    assert sorted(d.module for d in docs) == [f"mod{m}" for m in range(6)]
    first = next(d for d in docs if d.module == "mod0")
    assert [e.name for e in first.entries] == [f"tool_0_{f}" for f in range(8)] and first.words() > 500
    assert first.entries[2].signature == "def tool_0_2(path, size=2)"


def test_each_task_makes_its_kind_of_prompt(library):
    docs, rng = module_docs(sorted(library.glob("*.py"))), random.Random(0)
    made = {task: task_prompts(task, docs, 12, rng) for task in TASKS}
    assert all(made[task] and all(row["category"] == task for row in made[task]) for task in TASKS)
    for row in made["chat"]:
        assert len(row["turns"]) == 2 and row["turns"][1] in FOLLOW_UPS
    every_doc = " ".join(" ".join(e.doc.split()) for d in docs for e in d.entries)
    for row in made["translation"]:
        turns = row.get("turns") or [row["prompt"]]
        language, sentence = re.fullmatch(r"Translate into (\w+): (.+)", turns[0]).groups()
        assert sentence in every_doc and 8 <= len(sentence.split()) <= 30 and sentence.endswith(".")
        assert turns[1:] in ([], [f"Now translate your {language} text back into English."])
    back = sum("turns" in row for row in made["translation"])
    assert 0 < back < len(made["translation"])  # both directions
    for row in made["summarization"] + made["qa"]:
        assert len(row["prompt"].split()) >= 500 and row["source"] == "stdlib mod0"  # only mod0 is long enough
    for row in made["qa"]:
        name = re.search(r"`(tool_\d_\d)`", row["prompt"].rsplit("\n\n", 1)[1]).group(1)
        assert f"def {name}(" in row["prompt"]  # the question is about a function the document holds
    for row in made["rag"]:
        asked = re.search(r"what does `(\w+)` do", row["prompt"]).group(1)
        assert f"def {asked}(" in row["prompt"] and row["prompt"].count("\n[") >= 2
    assert all(row["prompt"].startswith("Write") for row in made["code"])


def test_math_problems_are_distinct_and_ask_for_steps():
    problems = math_problems(50, seed=1)
    assert len({p["prompt"] for p in problems}) == 50
    assert all(re.search(r"step|working", p["prompt"], re.I) for p in problems)
    assert math_problems(5, seed=1) == problems[:5]  # seeded


def test_a_mix_is_normalized_and_checked():
    assert parse_mix("chat:3,math:1") == {"chat": 0.75, "math": 0.25}
    assert parse_mix("code") == {"code": 1.0}
    broad = parse_mix("broad")
    assert broad["everyday"] == pytest.approx(2 / 11) and sum(broad.values()) == pytest.approx(1)
    for bad, message in [("poetry:1", "unknown task 'poetry'"), ("chat:x", "not a number"),
                         ("chat:0", "must be > 0")]:
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)


def test_make_prompts_writes_the_mix_in_its_proportions(library, tmp_path):
    out = tmp_path / "mix.jsonl"
    summary = run_make_prompts(MakePromptsConfig(source=f"tasks:{library}", mix="chat:1,math:2,translation:1",
                                                 max_prompts=40, out=str(out)), progress=False)
    rows = read_rows(out)
    assert summary["prompts"] == len(rows) and summary["by_task"]["math"] == 20
    assert {row["category"] for row in rows} == {"chat", "math", "translation"}
    assert all("turns" in row for row in rows if row["category"] == "chat")
    assert not any("turns" in row for row in rows if row["category"] == "math")
    assert len({row["id"] for row in rows}) == len(rows)
    with pytest.raises(ValueError, match="unknown task"):
        MakePromptsConfig(source="tasks", mix="chat:1,poems:1")
    assert mixed_prompts(sorted(library.glob("*.py")), {"math": 1.0}, 10, 0) == \
        mixed_prompts(sorted(library.glob("*.py")), {"math": 1.0}, 10, 0)  # seeded


def test_everyday_requests_vary_and_never_ask_a_heldout_prompt():
    from pathlib import Path

    from specdistill.data.everyday_prompts import everyday_prompt, everyday_prompts
    from specdistill.data.prompts import HELDOUT_PROMPTS, read_conversations

    rng = random.Random(0)
    made = [everyday_prompt(rng) for _ in range(3000)]
    first = [row["turns"][0] for row in made]
    assert all(len(row["turns"]) == 2 for row in made) and len(set(first)) > 800
    unique = [row["turns"][0] for row in everyday_prompts(600, random.Random(1))]
    assert len(unique) == len(set(unique)) == 600
    assert all(any(text.startswith(opening) for text in first) for opening in ("Give me", "Explain", "Write",
                                                                               "What are", "Compare"))
    heldout = Path(__file__).resolve().parents[2] / "bench/prompts/broad-heldout.jsonl"
    asked = {turn.strip().lower() for c in read_conversations(str(heldout)) for turn in c.turns}
    asked |= {p.strip().lower() for p in HELDOUT_PROMPTS}
    assert not asked & {turn.strip().lower() for row in made for turn in row["turns"]}
