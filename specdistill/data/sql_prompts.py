"""Text-to-SQL requests, from templates written for this project (``make-prompts --source tasks`` task ``sql``).

An application that turns questions into queries sends one kind of request all day: a schema and a question.
The shipped head never saw such requests (greedy τ 1.23 on six of them, against 3.56 on extraction), which makes
the task a domain for the capture-adapt-swap benchmark (``bench/bench_adapt.py --domain sql``). A request is one
of the schemas below (a domain of two or three tables), a question made from one of the templates over its
columns, and one of several ways to ask. Everything here is written for this project; no benchmark's schemas or
questions (Spider, BIRD, WikiSQL) are used. ``sql_prompts(..., domains=)`` draws from some domains only, so a
held-out set can come from domains the captured requests never use.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

# A domain: tables as "name/singular: column TYPE [kind[=values]], ...". The kinds a question can use:
# text (a name to show), cat=a|b|c (a category and some of its values), num=low..high (an amount: totals make
# sense), level=low..high (a number that is compared and averaged, never added up), date, fk=table.
DOMAINS = {
    "company": ["employees/employee: id INTEGER, full_name TEXT text, department TEXT cat=Sales|Support|Finance|"
                "Engineering, salary REAL num=30000..120000, hired_on DATE date, manager_id INTEGER",
                "projects/project: id INTEGER, title TEXT text, budget REAL num=5000..500000, started_on DATE date",
                "assignments/assignment: employee_id INTEGER fk=employees, project_id INTEGER fk=projects, "
                "hours INTEGER num=1..200"],
    "shop": ["customers/customer: id INTEGER, name TEXT text, city TEXT cat=Lyon|Berlin|Porto|Leeds, "
             "joined_on DATE date",
             "orders/order: id INTEGER, customer_id INTEGER fk=customers, total REAL num=5..900, "
             "status TEXT cat=paid|shipped|returned, placed_on DATE date"],
    "library": ["authors/author: id INTEGER, name TEXT text, country TEXT cat=France|Japan|Chile|Canada",
                "books/book: id INTEGER, title TEXT text, author_id INTEGER fk=authors, year INTEGER level=1950..2024, "
                "genre TEXT cat=poetry|crime|history|science",
                "loans/loan: id INTEGER, book_id INTEGER fk=books, borrowed_on DATE date, days INTEGER num=1..60"],
    "cinema": ["movies/movie: id INTEGER, title TEXT text, rating TEXT cat=G|PG|R, minutes INTEGER level=70..200",
               "screenings/screening: id INTEGER, movie_id INTEGER fk=movies, starts_at TIMESTAMP date, "
               "seats_sold INTEGER num=0..300"],
    "airline": ["airports/airport: code TEXT text, city TEXT cat=Madrid|Oslo|Dublin|Athens",
                "flights/flight: id INTEGER, origin TEXT, destination TEXT cat=Madrid|Oslo|Dublin|Athens, "
                "departs_at TIMESTAMP date, seats INTEGER level=50..400, price REAL level=40..900"],
    "clinic": ["patients/patient: id INTEGER, name TEXT text, city TEXT cat=Nantes|Graz|Turin|Ghent, "
               "birth_date DATE date",
               "visits/visit: id INTEGER, patient_id INTEGER fk=patients, doctor TEXT cat=Dr. Lane|Dr. Ortiz|"
               "Dr. Kim, visited_on DATE date, cost REAL num=20..400"],
    "school": ["students/student: id INTEGER, name TEXT text, grade INTEGER cat=9|10|11|12, enrolled_on DATE date",
               "courses/course: id INTEGER, title TEXT text, credits INTEGER level=1..6",
               "enrollments/enrollment: student_id INTEGER fk=students, course_id INTEGER fk=courses, "
               "score REAL level=0..100"],
    "warehouse": ["suppliers/supplier: id INTEGER, name TEXT text, country TEXT cat=Italy|Mexico|Vietnam|Poland",
                  "products/product: sku TEXT, name TEXT text, supplier_id INTEGER fk=suppliers, "
                  "category TEXT cat=tools|garden|kitchen|toys, stock INTEGER num=0..500, "
                  "unit_price REAL level=1..300"],
    "hotel": ["hotels/hotel: id INTEGER, name TEXT text, city TEXT cat=Rome|Vienna|Prague|Seville, "
              "stars INTEGER level=1..5",
              "bookings/booking: id INTEGER, hotel_id INTEGER fk=hotels, guest TEXT text, check_in DATE date, "
              "nights INTEGER num=1..14, amount REAL num=60..3000"],
    "music": ["artists/artist: id INTEGER, name TEXT text, genre TEXT cat=jazz|rock|folk|techno",
              "tracks/track: id INTEGER, artist_id INTEGER fk=artists, title TEXT text, seconds INTEGER num=90..600, "
              "released_on DATE date",
              "plays/play: track_id INTEGER fk=tracks, played_at TIMESTAMP date, listener_country TEXT "
              "cat=US|BR|DE|IN"],
    "league": ["teams/team: id INTEGER, name TEXT text, division TEXT cat=North|South|East|West",
               "players/player: id INTEGER, team_id INTEGER fk=teams, name TEXT text, position TEXT "
               "cat=goalkeeper|defender|midfielder|forward, goals INTEGER num=0..40, born_on DATE date"],
    "rentals": ["cars/car: id INTEGER, plate TEXT text, model TEXT cat=Clio|Golf|Corolla|Model 3, "
                "mileage INTEGER level=1000..200000",
                "rentals/rental: id INTEGER, car_id INTEGER fk=cars, customer TEXT text, picked_up DATE date, "
                "days INTEGER num=1..30, fee REAL num=30..2500"],
    "support": ["agents/agent: id INTEGER, name TEXT text, team TEXT cat=billing|technical|returns",
                "tickets/ticket: id INTEGER, agent_id INTEGER fk=agents, subject TEXT text, priority TEXT "
                "cat=low|normal|high|urgent, opened_at TIMESTAMP date, minutes_to_close INTEGER level=5..5000"],
    "billing": ["clients/client: id INTEGER, company TEXT text, country TEXT cat=Spain|Kenya|Peru|Norway",
                "invoices/invoice: id INTEGER, client_id INTEGER fk=clients, amount REAL num=100..50000, "
                "issued_on DATE date, state TEXT cat=open|paid|overdue"],
    "logistics": ["depots/depot: id INTEGER, city TEXT text, region TEXT cat=north|south|coast|inland",
                  "shipments/shipment: id INTEGER, depot_id INTEGER fk=depots, weight_kg REAL num=1..2000, "
                  "shipped_on DATE date, carrier TEXT cat=DHL|UPS|FedEx"],
    "events": ["events/event: id INTEGER, name TEXT text, venue TEXT cat=Hall A|Hall B|Garden, "
               "held_on DATE date, capacity INTEGER level=20..2000",
               "tickets_sold/sale: event_id INTEGER fk=events, buyer TEXT text, price REAL num=5..250, "
               "sold_at TIMESTAMP date"],
    "recipes": ["recipes/recipe: id INTEGER, name TEXT text, cuisine TEXT cat=Thai|Greek|Mexican|Indian, "
                "prep_minutes INTEGER level=5..180",
                "ingredients/ingredient: recipe_id INTEGER fk=recipes, item TEXT text, grams INTEGER num=1..1000"],
    "sensors": ["devices/device: id INTEGER, label TEXT text, room TEXT cat=kitchen|lab|office|garage, "
                "installed_on DATE date",
                "readings/reading: device_id INTEGER fk=devices, taken_at TIMESTAMP date, "
                "temperature REAL level=-10..45, humidity REAL level=0..100"],
    "blog": ["users/user: id INTEGER, username TEXT text, country TEXT cat=Chile|Egypt|Ireland|Korea, "
             "signed_up DATE date",
             "posts/post: id INTEGER, user_id INTEGER fk=users, title TEXT text, published_on DATE date, "
             "views INTEGER num=0..100000",
             "comments/comment: id INTEGER, post_id INTEGER fk=posts, body TEXT text, likes INTEGER num=0..500"],
    "gym": ["members/member: id INTEGER, name TEXT text, plan TEXT cat=basic|plus|premium, joined_on DATE date",
            "classes/class: id INTEGER, title TEXT text, coach TEXT cat=Ana|Ben|Chloe, minutes INTEGER level=30..90",
            "check_ins/check_in: member_id INTEGER fk=members, class_id INTEGER fk=classes, "
            "checked_in_on DATE date"],
    "realty": ["agents/agent: id INTEGER, name TEXT text, office TEXT cat=downtown|harbour|airport",
               "listings/listing: id INTEGER, agent_id INTEGER fk=agents, address TEXT text, price REAL "
               "level=80000..2000000, bedrooms INTEGER level=1..6, listed_on DATE date"],
    "transit": ["stations/station: id INTEGER, name TEXT text, line TEXT cat=red|blue|green|yellow",
                "trips/trip: id INTEGER, station_id INTEGER fk=stations, rider_type TEXT cat=adult|student|senior, "
                "fare REAL num=1..12, tapped_at TIMESTAMP date"],
    "farm": ["fields/field: id INTEGER, name TEXT text, crop TEXT cat=wheat|maize|barley|soy, hectares REAL num=1..300",
             "harvests/harvest: field_id INTEGER fk=fields, harvested_on DATE date, tonnes REAL num=1..2000"],
    "courses_online": ["instructors/instructor: id INTEGER, name TEXT text, field TEXT cat=design|data|writing",
                       "lessons/lesson: id INTEGER, instructor_id INTEGER fk=instructors, title TEXT text, "
                       "minutes INTEGER level=3..90, published_on DATE date, views INTEGER num=0..90000"],
}
ASKS = (
    "Given this SQLite schema:\n\n{schema}\n\nWrite one SQL query that answers: {question} Reply with the query only.",
    "{schema}\n\n-- {question}\n-- Write the SQL query.",
    "Here are my tables:\n{schema}\nWrite a SQL query for this: {question}",
    "Database schema:\n{schema}\n\nQuestion: {question}\nSQL:",
    "I use PostgreSQL with these tables:\n\n{schema}\n\n{question} Give me the query.",
    "Write a SQL query over the tables below. {question}\n\n{schema}",
)


@dataclass
class Column:
    name: str
    type: str
    kind: str = ""
    values: str = ""

    @property
    def words(self) -> str:
        return self.name.replace("_", " ")

    def declaration(self) -> str:
        if self.kind == "fk":
            return f"{self.name} {self.type} REFERENCES {self.values}"
        return f"{self.name} {self.type}{' PRIMARY KEY' if self.name in ('id', 'code', 'sku') else ''}"


@dataclass
class Table:
    name: str
    singular: str
    columns: list[Column]

    @property
    def words(self) -> str:
        return self.name.replace("_", " ")

    def of(self, kind: str) -> list[Column]:
        return [c for c in self.columns if c.kind == kind]

    def create(self) -> str:
        return f"CREATE TABLE {self.name} ({', '.join(c.declaration() for c in self.columns)});"


def parse_table(spec: str) -> Table:
    """``"name/singular: column TYPE [kind[=values]], ..."`` as a table."""
    head, body = spec.split(": ", 1)
    name, singular = head.split("/")
    columns = []
    for part in body.split(", "):
        column, col_type, *kind = part.split(" ")
        kind_name, _, values = " ".join(kind).partition("=")
        columns.append(Column(column, col_type, kind_name, values))
    return Table(name, singular, columns)


@cache
def domain_tables(domain: str) -> tuple[Table, ...]:
    """A domain's tables, parsed once (never mutated)."""
    return tuple(parse_table(spec) for spec in DOMAINS[domain])


def _pick(columns: list[Column], rng: random.Random) -> Column | None:
    return rng.choice(columns) if columns else None


def _value(column: Column, rng: random.Random) -> str:
    """A literal for a WHERE clause: one of a category's values (quoted if text), or a round point of a number's
    range."""
    if column.kind == "cat":
        value = rng.choice(column.values.split("|"))
        return f"'{value}'" if column.type == "TEXT" else value
    low, high = (float(x) for x in column.values.split(".."))
    return str(int(low + (high - low) * rng.choice((0.2, 0.25, 0.5, 0.6, 0.75, 0.9))))


def _single(t: Table, rng: random.Random) -> str | None:
    """A question over one table, or None when the table lacks the columns the drawn template needs."""
    text, cat, amount, date = (_pick(t.of(k), rng) for k in ("text", "cat", "num", "date"))
    num = _pick(t.of("num") + t.of("level"), rng)  # compared and averaged; only an amount is summed
    year = rng.randint(2018, 2025)
    templates = [
        (cat, lambda: f"How many {t.words} are there for each {cat.words}?"),
        (num and text, lambda: f"List the {text.words} of every {t.singular} with {num.words} above "
                               f"{_value(num, rng)}."),
        (num and text, lambda: f"Which {rng.choice((3, 5, 10))} {t.words} have the highest "
                               f"{num.words}? Show their {text.words} and {num.words}."),
        (num and cat, lambda: f"What is the average {num.words} per {cat.words}?"),
        (cat and text, lambda: f"Show the {text.words} of each {t.singular} whose {cat.words} is "
                               f"{_value(cat, rng)}, sorted alphabetically."),
        (date, lambda: f"Find all {t.words} whose {date.words} is in {year}, newest first."),
        (cat and num, lambda: f"How many {t.words} have {cat.words} {_value(cat, rng)} and "
                              f"{num.words} below {_value(num, rng)}?"),
        (cat and num, lambda: f"What is the largest {num.words} for {cat.words} {_value(cat, rng)}?"),
        (cat, lambda: f"List the distinct values of {cat.words} in {t.name}, in alphabetical order."),
        (amount and date, lambda: f"What was the total {amount.words} per month in {year}?"),
    ]
    usable = [make for ok, make in templates if ok]
    return rng.choice(usable)() if usable else None


def _joined(parent: Table, child: Table, rng: random.Random) -> str | None:
    """A question over a table and one that refers to it."""
    label = (parent.of("text") or parent.of("cat") or [None])[0]
    if label is None:
        return None
    amount, num = _pick(child.of("num"), rng), _pick(child.of("num") + child.of("level"), rng)
    children = child.words
    templates = [
        lambda: f"For each {parent.singular}, give its {label.words} and the number of {children}.",
        lambda: f"List the {label.words} of {parent.name} that have at least {rng.randint(2, 10)} {children}.",
        lambda: f"Which {parent.name} have no {children} at all?",
    ]
    if amount is not None:
        templates.append(lambda: f"What is the total {amount.words} of {children} for each {parent.singular}'s "
                                 f"{label.words}? Highest first.")
    if num is not None:
        templates.append(lambda: f"Show the {label.words} of the {parent.singular} with the highest average "
                                 f"{num.words} over its {children}.")
    return rng.choice(templates)()


def sql_request(domain: str, rng: random.Random) -> str:
    """One request: the domain's schema, a question over it, asked one of several ways."""
    tables = domain_tables(domain)
    by_name = {t.name: t for t in tables}
    links = [(by_name[c.values], t) for t in tables for c in t.of("fk")]
    question = None
    while question is None:
        if links and rng.random() < 0.4:
            question = _joined(*rng.choice(links), rng)
        else:
            question = _single(rng.choice(tables), rng)
    schema = "\n".join(t.create() for t in tables)
    return rng.choice(ASKS).format(schema=schema, question=question)


def sql_prompts(count: int, rng: random.Random, domains: list[str] | None = None) -> list[dict]:
    """Up to ``count`` distinct requests ({prompt, source}) from ``domains`` (all of them by default)."""
    domains = list(domains or DOMAINS)
    unknown = set(domains) - set(DOMAINS)
    if unknown:
        raise ValueError(f"unknown SQL domains {sorted(unknown)}; choose from {', '.join(DOMAINS)}")
    prompts: dict[str, str] = {}
    for _ in range(count * 20):
        if len(prompts) >= count:
            break
        domain = rng.choice(domains)
        prompts.setdefault(sql_request(domain, rng), domain)
    return [{"prompt": p, "source": f"specdistill sql templates, {d}"} for p, d in prompts.items()]
