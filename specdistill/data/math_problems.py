"""Math word problems made from templates with random numbers, for a broad training mix.

Written for this project (no published benchmark's questions): each template draws its numbers so
that the answer is a whole number, and asks for a step-by-step solution. The target answers them
as it would a user, so the draft learns the target's own way of reasoning step by step.
"""

from __future__ import annotations

import random

STEP_BY_STEP = ("Solve it step by step.", "Show your working.", "Explain each step.", "Think step by step.")


def _shop(rng: random.Random) -> str:
    price, count, paid = rng.randint(2, 15), rng.randint(3, 12), 0
    paid = price * count + rng.choice((0, 5, 10, 20))
    item = rng.choice(("notebooks", "apples", "tickets", "mugs", "pens", "plants"))
    return f"A shop sells {item} at {price} euros each. Sam buys {count} and pays with {paid} euros. " \
           "How much change does Sam get?"


def _speed(rng: random.Random) -> str:
    speed, hours = rng.randint(4, 90), rng.randint(2, 9)
    who = rng.choice(("A train", "A cyclist", "A boat", "A runner", "A bus"))
    return f"{who} travels at {speed} km per hour for {hours} hours, then half as long again at the same " \
           f"speed. How far does it travel in all?" if hours % 2 == 0 else \
        f"{who} travels {speed * hours} km in {hours} hours. At the same speed, how long does {speed * (hours + 2)} " \
        "km take?"


def _percent(rng: random.Random) -> str:
    price, off = rng.randint(2, 40) * 10, rng.choice((10, 20, 25, 30, 50))
    thing = rng.choice(("a jacket", "a bicycle", "a lamp", "a chair", "a pair of boots"))
    return f"{thing.capitalize()} costs {price} dollars. It is reduced by {off}%. What does it cost now, and " \
           "how much is saved?"


def _share(rng: random.Random) -> str:
    parts = [rng.randint(1, 5) for _ in range(rng.choice((2, 3)))]
    total = sum(parts) * rng.randint(3, 20)
    names = rng.sample(("Ana", "Ben", "Chen", "Dara", "Eli", "Farah"), len(parts))
    return f"{', '.join(names[:-1])} and {names[-1]} share {total} marbles in the ratio " \
           f"{' : '.join(map(str, parts))}. How many marbles does each get?"


def _area(rng: random.Random) -> str:
    length, width, cost = rng.randint(3, 25), rng.randint(2, 15), rng.randint(2, 12)
    return f"A room is {length} m long and {width} m wide. Flooring costs {cost} dollars per square metre. " \
           "What does it cost to cover the floor?"


def _ages(rng: random.Random) -> str:
    child, years = rng.randint(3, 15), rng.randint(2, 10)
    factor = rng.choice((2, 3, 4))
    return f"A parent is {factor} times as old as a child who is {child}. How old will the parent be in " \
           f"{years} years, and how old will the child be then?"


def _work(rng: random.Random) -> str:
    per_hour, hours, days = rng.randint(5, 30), rng.randint(2, 8), rng.randint(3, 6)
    return f"A machine packs {per_hour} boxes an hour. It runs {hours} hours a day for {days} days. How many " \
           "boxes does it pack, and how many crates of 10 boxes is that?"


def _average(rng: random.Random) -> str:
    scores = [rng.randint(50, 100) for _ in range(rng.randint(3, 6))]
    return f"A student's test scores are {', '.join(map(str, scores))}. What is the average score? Round to " \
           "one decimal place."


def _time(rng: random.Random) -> str:
    start_hour, start_min = rng.randint(6, 20), rng.choice((0, 15, 20, 30, 45))
    minutes = rng.randint(25, 200)
    return f"A film starts at {start_hour}:{start_min:02d} and lasts {minutes} minutes. At what time does it end?"


def _fractions(rng: random.Random) -> str:
    whole = rng.randint(2, 12) * 12
    first, second = rng.choice(((1, 3), (1, 4), (1, 2), (2, 3))), rng.choice(((1, 4), (1, 6), (1, 3)))
    return f"A baker has {whole} eggs. She uses {first[0]}/{first[1]} of them for cakes and {second[0]}/" \
           f"{second[1]} of the rest for bread. How many eggs are left?"


TEMPLATES = (_shop, _speed, _percent, _share, _area, _ages, _work, _average, _time, _fractions)


def math_problems(count: int, seed: int = 0) -> list[dict]:
    """``count`` distinct problems ({prompt, source}), each asking for a step-by-step answer."""
    rng, seen, problems = random.Random(seed), set(), []
    for _ in range(count * 20):
        template = rng.choice(TEMPLATES)
        prompt = f"{template(rng)} {rng.choice(STEP_BY_STEP)}"
        if prompt not in seen:
            seen.add(prompt)
            problems.append({"prompt": prompt, "source": f"math template {template.__name__[1:]}"})
        if len(problems) == count:
            break
    return problems
