import random
import re
import sqlite3
from pathlib import Path

import pytest

from specdistill.data.prompts import read_conversations
from specdistill.data.sql_prompts import ASKS, DOMAINS, domain_tables, sql_prompts

HELDOUT = Path(__file__).resolve().parents[2] / "bench/prompts/sql-heldout.jsonl"


def test_every_domain_parses_into_a_schema_sqlite_accepts():
    for domain in DOMAINS:
        tables = domain_tables(domain)
        names = {t.name for t in tables}
        for table in tables:
            assert table.of("text") or table.of("cat") or table.of("fk"), f"{domain}.{table.name}: nothing to ask"
            assert all(c.values in names for c in table.of("fk")), f"{domain}.{table.name} refers outside"
            for column in table.of("num"):
                low, high = (float(x) for x in column.values.split(".."))
                assert low < high
        database = sqlite3.connect(":memory:")
        database.executescript("\n".join(t.create() for t in tables))  # raises on a malformed schema


def test_requests_are_distinct_varied_and_name_only_their_schema():
    made = sql_prompts(2000, random.Random(0))
    prompts = [row["prompt"] for row in made]
    assert len(prompts) == len(set(prompts)) == 2000
    assert {row["source"].rsplit(", ", 1)[1] for row in made} == set(DOMAINS)
    for ask in ASKS:  # every way of asking is used
        words = max(re.split(r"\{\w+\}", ask), key=len)
        assert any(words in p for p in prompts), words
    for prompt in prompts[:300]:
        created = re.findall(r"CREATE TABLE (\w+) \(", prompt)
        assert any(created == [s.split("/")[0] for s in specs] for specs in DOMAINS.values()), created
        assert "{" not in prompt and "None" not in prompt
    joins = sum("For each" in p and "the number of" in p or "have no" in p for p in prompts)
    assert joins > 50  # questions over two tables are asked too


def test_a_domain_subset_keeps_other_domains_out():
    held = ["clinic", "farm", "music"]
    made = sql_prompts(300, random.Random(1), [d for d in DOMAINS if d not in held])
    assert not {row["source"].rsplit(", ", 1)[1] for row in made} & set(held)
    with pytest.raises(ValueError, match="unknown SQL domains"):
        sql_prompts(3, random.Random(0), ["clinic", "zoo"])


def test_the_handwritten_heldout_set_uses_no_template_table_nor_question():
    heldout = read_conversations(str(HELDOUT))
    assert len(heldout) == 10 and {c.category for c in heldout} == {"sql"}
    template_tables = {spec.split("/")[0] for specs in DOMAINS.values() for spec in specs}
    for conversation in heldout:
        tables = set(re.findall(r"CREATE TABLE (\w+)", conversation.turns[0]))
        assert not tables & template_tables
    # Nor a template's way of asking: each is in the hand-written requests' own words.
    asks = [max(re.split(r"\{\w+\}", ask), key=len).strip() for ask in ASKS]
    assert not [ask for ask in asks for c in heldout if ask in c.turns[0]]
