"""Everyday chat requests, from templates written for this project (``make-prompts --mix`` task ``everyday``).

The ``chat`` task asks about Python; users also ask an assistant for advice, explanations, plans, lists of
ideas, and short pieces of writing about everything else. A head that never saw such requests drafts them
poorly (the shipped v6 head's greedy acceptance on general chat was 0.22 against 0.72 on Python chat), so
the broad mix asks them too. A request is one of the kinds below filled with one of the subjects; the
second turn asks about the model's own first answer. All of it is written for this project (its licence);
no benchmark's questions are here, and ``tests/unit/test_task_prompts.py`` checks that no held-out prompt is made.
"""

from __future__ import annotations

import random

ACTIVITIES = (
    "cooking rice on a stove", "training for a first 5 km run", "keeping houseplants alive",
    "saving money on groceries", "preparing for a job interview", "writing a cover letter",
    "moving to a new city", "learning a new language as an adult", "starting a vegetable garden on a balcony",
    "getting up earlier in the morning", "studying for an exam", "painting a room", "baking sourdough bread",
    "teaching a dog to sit", "planning a road trip", "making a monthly budget", "reducing screen time",
    "cleaning a kitchen quickly", "taking better photos with a phone", "running a meeting at work",
    "giving a short speech at a wedding", "making friends in a new town", "learning to swim",
    "organizing a small closet", "packing for a long flight", "cycling to work", "keeping a journal",
    "hosting a dinner for six people", "buying a used car", "fixing a dripping tap", "learning to draw",
    "staying focused while working from home", "caring for a cat", "choosing a laptop",
    "preparing healthy lunches for the week", "starting to meditate", "writing a birthday card",
    "learning to play chess", "keeping a small aquarium", "recycling at home", "knitting a scarf",
    "negotiating a salary", "teaching a child to ride a bike", "decorating a small flat on a budget",
    "making coffee without a machine", "choosing running shoes", "reading more books",
    "growing tomatoes", "planning a picnic", "writing a short story", "learning to type faster",
)
CONCEPTS = (
    "how vaccines work", "why the sky is blue", "what inflation is", "how a rainbow forms",
    "photosynthesis", "how credit scores work", "what a black hole is", "how the heart pumps blood",
    "why leaves change colour in autumn", "how an election is counted", "what a mortgage is",
    "how bees make honey", "why we dream", "how a refrigerator keeps food cold", "what gravity is",
    "how the internet sends a message", "why the moon has phases", "what a recession is",
    "how muscles grow", "what climate change is", "how a bicycle stays upright", "what a virus is",
    "how tides work", "why bread rises", "what an insurance policy does", "how solar panels make power",
    "how the stock market works", "why ice floats", "what a calorie is", "how a compass works",
    "how earthquakes happen", "what renewable energy is", "how glasses correct vision",
    "why cats purr", "how a plane flies", "what a tax return is", "how memory works in the brain",
    "what an ecosystem is", "how soap cleans", "why we need sleep",
)
PAIRS = (
    ("tea", "coffee"), ("renting a home", "buying one"), ("a bicycle", "a scooter for short trips"),
    ("running", "swimming"), ("paper books", "e-readers"), ("a desktop computer", "a laptop"),
    ("weather", "climate"), ("a virus", "a bacterium"), ("saving", "investing"), ("baking", "roasting"),
    ("a crocodile", "an alligator"), ("a lake", "a sea"), ("a cold", "the flu"), ("debit cards", "credit cards"),
    ("a comet", "an asteroid"), ("jam", "marmalade"), ("a hobby", "a job"), ("a train trip", "a flight"),
)
FORMS = ("a short poem about", "a four-line poem about", "a haiku about", "a limerick about",
         "a short story, about 100 words, about", "a short description of", "a diary entry about")
SUBJECTS = (
    "the first snow of winter", "a busy train station", "a cat asleep in the sun", "a lost umbrella",
    "a robot learning to paint", "an old bicycle", "a market on a Saturday morning", "a thunderstorm at night",
    "a child's first day at school", "a forgotten letter", "a fox in a city park", "the smell of fresh coffee",
    "a long queue at the post office", "a kite on a windy beach", "a grandmother's kitchen", "a broken clock",
    "a night bus", "the last day of summer", "a stray dog that finds a home", "a quiet library",
    "a hot air balloon", "a snowman melting", "a fisherman at dawn", "a noisy neighbour",
    "a tree that has stood for three hundred years", "moving house", "a missed train", "a rainy football match",
)
WRITING = (
    "a message asking a colleague to swap shifts", "a short complaint to a shop about a late delivery",
    "an email asking a landlord to fix the heating", "a product description for a reusable water bottle",
    "a product description for a wooden desk lamp", "a welcome message for new members of a book club",
    "a short speech for a friend's retirement", "a description of a quiet beach at sunrise",
    "a review of an imaginary Italian restaurant", "a short fable with a moral about patience",
    "an announcement that the office will close early on Friday", "a haiku about rain on a window",
    "a limerick about a forgetful chef", "a motivational note for someone starting a new job",
)
IDEAS = (
    "a rainy Sunday with children", "a tenth wedding anniversary", "a team-building afternoon",
    "a school science fair project", "a cheap weekend in a big city", "a vegetarian dinner party",
    "a gift for a friend who likes hiking", "names for a new podcast about history",
    "names for a dog-walking business", "a theme for a costume party", "things to do on a long train trip",
    "a fundraiser for a local library", "a healthy breakfast that takes five minutes",
    "ways to use leftover bread", "questions to ask at the end of an interview",
    "a birthday party for a seven-year-old", "a garden with very little sun", "a first date in winter",
    "a short holiday by the sea", "keeping children busy on a car journey", "a small wedding on a budget",
    "a blog about local history", "a lunch box for a picky eater", "exercise without any equipment",
    "a welcome gift for a new neighbour", "a story to tell at a campfire", "a quiz night at a pub",
    "decorating a classroom", "a weekend without a phone", "a club for retired people",
)
CHOICES = (
    "working from home", "living in a big city", "owning an electric car", "learning online",
    "having a pet rabbit", "working a four-day week", "getting up at five in the morning",
    "buying second-hand clothes", "travelling alone", "keeping a garden", "using a standing desk",
    "cooking every meal at home", "taking a gap year", "living without a car",
)
FOLLOW_UPS = (
    "Make your answer shorter: two sentences at most.", "Give a concrete example of your first point.",
    "Rewrite your answer in a more formal tone.", "Turn your answer into a numbered list.",
    "Explain the second point of your answer in more detail.", "Rewrite your answer for a child.",
    "Which part of your answer matters most, and why?", "Summarize your answer in one sentence.",
    "Add one more idea to your answer.", "What would you change in your answer for someone with little money?",
    "Now say the same thing in a friendly, casual tone.", "What is a common mistake related to your answer?",
)


def everyday_request(rng: random.Random) -> str:
    """One first turn: a request kind filled with a subject of its kind."""
    n = rng.choice(("three", "four", "five"))
    kind = rng.randrange(6)
    if kind == 0:
        activity = rng.choice(ACTIVITIES)
        return rng.choice((f"Give me {n} tips for {activity}.", f"How do I get started with {activity}?",
                           f"What are common mistakes people make when {activity}?",
                           f"Make a simple one-week plan for {activity}.",
                           f"I want to try {activity}. Where should I begin?",
                           f"What equipment or preparation do I need for {activity}?"))
    if kind == 1:
        concept = rng.choice(CONCEPTS)
        return rng.choice((f"Explain {concept} in simple terms.", f"Explain {concept} to a ten-year-old.",
                           f"Can you tell me {concept}, in a short paragraph?",
                           f"I never understood {concept}. Can you help?",
                           f"Describe {concept} step by step."))
    if kind == 2:
        a, b = rng.choice(PAIRS)
        return rng.choice((f"What is the difference between {a} and {b}?",
                           f"Compare {a} and {b} in a few sentences."))
    if kind == 3:
        writing = f"{rng.choice(FORMS)} {rng.choice(SUBJECTS)}" if rng.random() < 0.7 else rng.choice(WRITING)
        return f"Write {writing}."
    if kind == 4:
        idea = rng.choice(IDEAS)
        return rng.choice((f"Give me {n} ideas for {idea}.", f"I need some ideas for {idea}. What do you suggest?"))
    choice = rng.choice(CHOICES)
    return rng.choice((f"What are the pros and cons of {choice}?", f"Is {choice} a good idea? Give both sides.",
                       f"I am thinking about {choice}. What should I consider first?"))


def everyday_prompt(rng: random.Random) -> dict:
    """A two-turn everyday chat record: a request, then a follow-up about the model's own answer."""
    return {"turns": [everyday_request(rng), rng.choice(FOLLOW_UPS)]}


def everyday_prompts(count: int, rng: random.Random) -> list[dict]:
    """Up to ``count`` records whose first turns all differ (a greedy target answers a repeated request
    the same way, so a repeat would only weigh one answer twice)."""
    rows, seen = [], set()
    for _ in range(count * 20):
        if len(rows) >= count:
            break
        row = everyday_prompt(rng)
        if row["turns"][0] not in seen:
            seen.add(row["turns"][0])
            rows.append(row)
    return rows
