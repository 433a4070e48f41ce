"""Build ``bench/prompts/broad-heldout.jsonl``: the project's own broad held-out set, 8 task kinds of
10 requests each, never trained on.

    python bench/prompts/build_broad_heldout.py   # rewrites broad-heldout.jsonl

Sources (see README.md beside this file):
- hand-written for this project: the chat turns, sentences to translate, math word problems,
  texts to extract from, code requests and every question;
- the long documents (summarization, question answering, retrieval passages) are the READMEs that
  installed packages carry in their wheel metadata (``importlib.metadata``), under permissive
  licences (MIT, BSD, Apache-2.0), cleaned of markup. Training prompts come from other sources
  (the Python standard library and text the target writes), so no document is in both.

The committed JSONL is the set; this script says where it came from and rebuilds it (package
versions change what their READMEs say: the versions used are in each record's ``source``).
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

OUT = Path(__file__).with_name("broad-heldout.jsonl")

CHAT = [
    ["Suggest three names for a small bakery that sells bread made with old grains.",
     "Which of your three names would work best on a sign seen from a moving car, and why?"],
    ["Write a short message inviting my neighbours to a garden party on Saturday afternoon.",
     "Make your message more formal, and add that children are welcome."],
    ["Give me four tips for sleeping better when it is hot at night.",
     "Which of your tips costs nothing at all? Explain it in more detail."],
    ["Describe a simple plan for learning to play the guitar in three months.",
     "Shorten your plan to one sentence per month."],
    ["What should I pack for a two-day hike in the mountains in autumn?",
     "Turn your list into a checklist ordered by weight, heaviest first."],
    ["Write a four-line poem about a lighthouse in fog.",
     "Now rewrite your poem so that it rhymes in every line."],
    ["Explain what compound interest is to a twelve-year-old.",
     "Give a worked example with the numbers from your explanation, year by year."],
    ["List five questions to ask at the end of a job interview.",
     "Which two of your questions would you drop for a short phone interview?"],
    ["Propose a weekly dinner plan for a vegetarian family of four.",
     "Write the shopping list for the first three days of your plan."],
    ["How can a small team keep meetings short and useful?",
     "Summarize your advice as a set of three rules someone could pin on a wall."],
]

TRANSLATION = [
    "Translate into French: The train to the coast leaves every hour from the second platform.",
    "Translate into German: Please close the windows before you leave the office in the evening.",
    "Translate into Spanish: My grandmother grows tomatoes, beans and sunflowers in her garden.",
    "Translate into Italian: The museum is closed on Mondays, but the garden stays open.",
    "Translate into English: Le chat dort sur le canapé pendant que la pluie tombe dehors.",
    "Translate into English: Wir haben am Wochenende einen langen Spaziergang am Fluss gemacht.",
    "Translate into English: El concierto empezó tarde porque el pianista perdió el autobús.",
    "Translate into Portuguese: We need three more chairs for the meeting this afternoon.",
    "Translate into French: Could you tell me where the nearest pharmacy is, please?",
    "Translate into English: La biblioteca del paese apre alle nove e chiude alle sei.",
]

MATH = [
    "A baker makes 48 rolls each morning and sells them in bags of 6. On Tuesday she sold 5 bags before "
    "noon and 2 bags after. How many rolls were left? Solve it step by step.",
    "A cyclist rides 18 km per hour for 2.5 hours, then 12 km per hour for 1.5 hours. How far did she ride "
    "in total? Show each step.",
    "A garden is 12 m long and 7 m wide. A path 1 m wide runs all around the inside edge. What area is left "
    "for planting? Explain your reasoning step by step.",
    "Tom is three times as old as his daughter. In 12 years he will be twice as old as her. How old is each "
    "now? Solve it step by step.",
    "A shop reduces a coat priced 80 euros by 25%, then reduces the new price by 10%. What is the final "
    "price? Show the working.",
    "A tank holds 600 litres. One pipe fills it in 30 minutes and another empties it in 50 minutes. If both "
    "are open, how long does it take to fill the empty tank? Solve step by step.",
    "Three friends share a taxi fare of 42 dollars in the ratio 2 : 3 : 2. How much does each pay? Explain "
    "each step.",
    "A school orders 17 boxes of pencils with 24 pencils in each box and gives 9 pencils to each of 43 "
    "pupils. How many pencils are left over? Show your steps.",
    "The average of five numbers is 14. Four of them are 10, 12, 15 and 19. What is the fifth? Solve it "
    "step by step.",
    "A recipe for 4 people needs 300 g of rice. How much rice is needed for 10 people, and how many 1 kg "
    "bags must be bought? Show the working.",
]

EXTRACTION = [
    "Extract every date and the event on it as a JSON list of {\"date\", \"event\"}: The committee met on "
    "3 March 2024 to plan the fair. Tickets went on sale on 15 April, and the fair itself opened on 2 June "
    "and closed a week later on 9 June.",
    "List the people and their job titles from this text as 'name: title' lines: Maria Lopez, the chief "
    "engineer, opened the meeting. She introduced Daniel Kim, who joined as head of sales, and thanked "
    "Priya Nair, the outgoing finance director.",
    "From this order, extract the items, quantities and unit prices as a table: I'd like two bags of flour "
    "at 1.80 each, a dozen eggs for 3.20, three jars of honey at 5.50 a jar and one loaf of rye bread, 2.40.",
    "Find every email address and phone number in this text and list them: For bookings write to "
    "desk@harbourinn.example or call 555-0142. Group enquiries go to groups@harbourinn.example, and the "
    "night manager can be reached on 555-0199.",
    "Extract the city, the temperature and the weather for each day as JSON: Monday in Lyon was sunny at "
    "24 degrees, Tuesday brought rain and 17 degrees, and on Wednesday it was cloudy with 19 degrees.",
    "From this review, list the good points and the bad points separately: The hotel room was spotless and "
    "the staff were friendly, but the walls were thin and breakfast ended far too early. The view over the "
    "old town made up for a lot.",
    "Pull out the names of all the books and their authors mentioned here: In our club this year we read "
    "Middlemarch by George Eliot, then The Remains of the Day by Kazuo Ishiguro, and finished with Beloved "
    "by Toni Morrison.",
    "Extract the ingredients and amounts from this recipe as a bulleted list: Whisk 3 eggs with 250 ml of "
    "milk and a pinch of salt. Stir in 120 g of flour, then add 30 g of melted butter before frying.",
    "From this message, extract the meeting time, the place and who must attend: Hi all, the budget review "
    "moves to Thursday at 14:30 in room B12. Anna, Lucas and the two team leads need to be there.",
    "Extract every number with its unit from this sentence and say what each measures: The bridge is 1.2 km "
    "long, rises 45 m above the water, carries 30,000 cars a day and took 4 years to build.",
]

CODE = [
    "Write a JavaScript function that returns the largest number in an array.",
    "Write an SQL query that lists each customer with the total amount of their orders, highest first.",
    "Write a bash one-liner that counts the lines of every .txt file in a folder.",
    "Explain what this Python does: print(sorted(set(word.lower() for word in text.split())))",
    "Write a Python function that checks whether two strings are anagrams of each other.",
    "Write a Python generator that yields the prime numbers below n.",
    "How do I make an HTTP GET request in Python with only the standard library?",
    "Write a Python function that flattens a nested list of any depth.",
    "What is the difference between a process and a thread? Answer briefly with an example.",
    "Write a Python dataclass for a book with a title, an author and a year, and sort a list of them by year.",
]

# READMEs of installed packages (permissive licences): 10 to summarize, 10 to answer questions on,
# and short passages from 5 more for the retrieval-augmented questions.
SUMMARIZE = ["uvicorn", "httpx", "idna", "h11", "dill", "fsspec", "mpmath", "python-dateutil", "pyparsing",
             "urllib3"]
ASK = ["rich", "typer", "accelerate", "peft", "datasets", "psutil", "xxhash", "annotated-types",
       "huggingface-hub", "pandas"]
QUESTIONS = [
    "According to the document, how do you install this package?",
    "What problem does this project solve, according to the text? Answer in two sentences.",
    "Which features does the document list? Answer with a short bulleted list.",
    "According to the text, what is the simplest example of using it? Describe it in words.",
    "Which other tools or libraries does the document mention, and what for?",
]
RETRIEVE = ["fastapi", "openai", "tqdm", "charset-normalizer", "regex"]
RAG_QUESTIONS = [
    ("fastapi", "What does the framework use to declare request data, according to the passages?"),
    ("openai", "How does the library read the API key, according to the passages?"),
    ("tqdm", "How do you add a progress bar to a loop, according to the passages?"),
    ("charset-normalizer", "What does the library detect, according to the passages?"),
    ("regex", "How does this module differ from the standard re module, according to the passages?"),
    ("fastapi", "Which documentation does the framework generate automatically, according to the passages?"),
    ("openai", "Does the library offer an asynchronous client? Answer from the passages."),
    ("tqdm", "Which environments or interfaces does the library support, according to the passages?"),
    ("charset-normalizer", "Which other library is it compared with, according to the passages?"),
    ("regex", "Which Python versions does the module support, according to the passages?"),
]


def clean_markdown(text: str) -> str:
    """README text without HTML, images, badges, link targets and tables' rules."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^\s*\[[^\]]+\]:\s*\S+.*$", "", text, flags=re.M)
    text = re.sub(r"^\s*\|?[-:| ]{3,}\|?\s*$", "", text, flags=re.M)
    text = re.sub(r"^\.\. .*$", "", text, flags=re.M)  # reStructuredText directives
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def readme(package: str, max_words: int) -> tuple[str, str]:
    """(cleaned README cut to about ``max_words`` at a paragraph end, 'package version licence').
    Words are counted as whitespace-separated pieces or 6 characters, whichever is more, so that
    tables and code do not make a document several times longer in tokens."""
    meta = metadata.metadata(package)
    body = clean_markdown(meta.get_payload() or meta.get("Description") or "")
    paragraphs, words, kept = body.split("\n\n"), 0, []
    for paragraph in paragraphs:
        size = max(len(paragraph.split()), len(paragraph) // 6)
        if words + size > max_words:
            if not words:  # one long first paragraph: cut it
                kept.append(paragraph[: 6 * max_words])
            break
        kept.append(paragraph)
        words += size
    licence = meta.get("License-Expression") or meta.get("License") or "see package"
    return "\n\n".join(kept), f"{package} {meta['Version']} README ({licence.splitlines()[0][:40]})"


def _is_prose(paragraph: str) -> bool:
    """Mostly words, not code or a list of commands."""
    words = paragraph.split()
    code = re.search(r"[=(]\s*$|^\s*\)", paragraph, re.M)
    return not code and not paragraph.lstrip().startswith(("```", "#", "$", ">>>")) and \
        sum(w.strip(".,;:!?()*'\"").isalpha() for w in words) >= 0.75 * len(words)


def passages(package: str, count: int = 3) -> list[str]:
    """The first ``count`` prose paragraphs of 25 to 120 words of a package's README."""
    text, _ = readme(package, 100_000)
    prose = [p for p in text.split("\n\n") if 25 <= len(p.split()) <= 120 and _is_prose(p)]
    return prose[:count]


def records() -> list[dict]:
    hand = "hand-written for specdistill"
    rows = [{"turns": turns, "category": "chat", "source": hand} for turns in CHAT]
    rows += [{"prompt": p, "category": "translation", "source": hand} for p in TRANSLATION]
    for package in SUMMARIZE:
        text, source = readme(package, 1200)
        rows.append({"prompt": f"Summarize the following document in one paragraph.\n\n{text}",
                     "category": "summarization", "source": source})
    for i, package in enumerate(ASK):
        text, source = readme(package, 1200)
        rows.append({"prompt": f"{text}\n\n{QUESTIONS[i % len(QUESTIONS)]}", "category": "qa", "source": source})
    rows += [{"prompt": p, "category": "math", "source": hand} for p in MATH]
    pool = {package: passages(package) for package in RETRIEVE}
    for i, (package, question) in enumerate(RAG_QUESTIONS):
        other = RETRIEVE[(RETRIEVE.index(package) + 1 + i % 4) % len(RETRIEVE)]  # a distractor's passages
        shown = pool[package] + pool[other][:2] if i % 2 else pool[other][:2] + pool[package]
        context = "\n\n".join(f"[{n}] {p}" for n, p in enumerate(shown, 1))
        rows.append({"prompt": f"Answer the question using only the passages below.\n\n{context}\n\n"
                               f"Question: {question}", "category": "rag",
                     "source": f"question {hand}; passages from the READMEs of {package} and {other}"})
    rows += [{"prompt": p, "category": "extraction", "source": hand} for p in EXTRACTION]
    rows += [{"prompt": p, "category": "code", "source": hand} for p in CODE]
    return rows


if __name__ == "__main__":
    rows = records()
    OUT.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    print(f"wrote {len(rows)} records to {OUT}")
