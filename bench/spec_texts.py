"""The prompts of the speculative-decoding benchmark (bench/speculative.py): four workloads, each
a fixed text with a few names, numbers and rows filled in per request from a seeded RNG.

- `code_edit`: a ~60-line Python function, to be returned whole with one stated change;
- `extraction`: a ~600-token report and a question to answer by quoting it;
- `json`: a 15-row markdown table to rewrite as a JSON array;
- `chat`: a short open question (nothing to copy: the control).

Every request gets its own names and numbers (`prompt(workload, key)`, deterministic in `key`),
so no request repeats an earlier one token for token: a server caching earlier prompts or outputs
(llama-server's ngram-cache and ngram-mod, llmd's prefix cache) sees what an office's stream of
different documents would give it, not the same answer replayed.
"""

from __future__ import annotations

import random

WORKLOADS = ("code_edit", "extraction", "json", "chat")
REPETITIVE = ("code_edit", "extraction", "json")
"""The workloads whose answer copies much of the prompt (speculation's case)."""
MAX_TOKENS = {"code_edit": 900, "extraction": 400, "json": 800, "chat": 256}
"""Room for a whole answer: the 60-line function is ~600 tokens, the table's JSON ~550."""

_CODE = '''\
def __FN__(__ITEMS__, limit=10, min_score=0.0, group_by="__KEY__", verbose=False):
    """Summarise __ITEMS__ by __KEY__: counts, totals and the best __REC__ of each group."""
    if not isinstance(__ITEMS__, list):
        raise TypeError("__ITEMS__ must be a list")
    if min_score < 0:
        raise ValueError("min_score must not be negative")
    if not group_by:
        raise ValueError("group_by must name a field")
    groups = {}
    skipped = 0
    for __REC__ in __ITEMS__:
        score = __REC__.get("score", 0.0)
        if score < min_score:
            skipped += 1
            continue
        name = __REC__.get(group_by)
        if name is None:
            skipped += 1
            continue
        group = groups.setdefault(name, {"count": 0, "__TOTAL__": 0.0, "best": None})
        group["count"] += 1
        group["__TOTAL__"] += score
        best = group["best"]
        if best is None or score > best.get("score", 0.0):
            group["best"] = __REC__
    __OUT__ = []
    for name, group in groups.items():
        mean = group["__TOTAL__"] / group["count"] if group["count"] else 0.0
        __OUT__.append(
            {
                "name": name,
                "count": group["count"],
                "__TOTAL__": round(group["__TOTAL__"], 2),
                "mean": round(mean, 2),
                "best": group["best"].get("id") if group["best"] else None,
            }
        )
    __OUT__.sort(key=lambda row: (-row["__TOTAL__"], row["name"]))
    if limit is not None and limit > 0:
        __OUT__ = __OUT__[:limit]
    if verbose:
        print(f"__FN__: {len(__ITEMS__)} rows, {skipped} skipped, {len(groups)} groups")
        for row in __OUT__:
            print(
                f"  {row['name']:<20} {row['count']:>5} "
                f"{row['__TOTAL__']:>10.2f} {row['mean']:>8.2f}"
            )
    summary = {
        "rows": len(__ITEMS__),
        "skipped": skipped,
        "groups": len(groups),
        "top": __OUT__,
    }
    if __OUT__:
        summary["leader"] = __OUT__[0]["name"]
        summary["leader___TOTAL__"] = __OUT__[0]["__TOTAL__"]
    else:
        summary["leader"] = None
        summary["leader___TOTAL__"] = 0.0
    return summary
'''

_FNS = ("summarise_scores", "group_results", "rank_entries", "tally_records", "score_report")
_ITEMS = ("records", "rows", "entries", "results", "samples", "events")
_RECS = ("record", "row", "entry", "item", "sample", "event")
_TOTALS = ("total", "sum", "points", "score_sum")
_KEYS = ("team", "region", "owner", "category", "office", "project")
_OUTS = ("table", "ranking", "report", "summary_rows", "leaders")
_CHANGES = (
    "change the default of `limit` from 10 to {n}",
    "make it raise ValueError when `{items}` is empty",
    "round the totals and means to 3 digits instead of 2",
    "sort groups with equal totals by count, highest first, before the name",
    "rename the variable `skipped` to `ignored` everywhere",
    "skip records whose score is negative, counting them as skipped",
)

_REPORT = """\
Quarterly report of __CO__, __CITY__ office

In the third quarter the __CITY__ office of __CO__ served __N1__ customers, up from __N2__ in the \
second quarter. Most of the growth came from the new maintenance contracts that __P1__ signed in \
July with three hospitals in the region. The contracts run for two years and cover the cooling \
systems of the operating theatres, which must be inspected every month.

The warehouse moved in August from the old building on Mill Street to the industrial park next \
to the ring road. The move took nine days instead of the five that were planned, because the \
new shelving arrived late and two of the forklifts failed their safety check. During the move \
orders were shipped from the __CITY2__ warehouse, which added one day to most deliveries.

__P2__ took over the service desk on the first of September. The desk now answers calls from \
seven in the morning to seven in the evening, and the average wait on the phone fell from four \
minutes to just under two. Customers can also open a ticket on the website, and about a third \
of all tickets now arrive that way.

Costs rose by __PCT__ percent over the quarter. The largest items were the move itself, the \
overtime paid during the move, and the price of copper pipe, which went up twice. Energy costs \
fell slightly because the new building has better insulation and a heat pump.

Customer feedback was mostly positive. In the survey sent after each repair, eighty-one percent \
of customers rated the visit as good or very good, against seventy-four percent a year ago. The \
most common complaint was that the technician arrived outside the agreed two-hour window, which \
happened on about one visit in twelve. The planners now send a text message when the technician \
leaves for the visit, and complaints about waiting fell in the last weeks of the quarter.

There were two safety incidents. A technician slipped on a wet roof in __CITY2__ and was off work \
for a week, and a van was damaged in a collision in the car park of a customer. Nobody else was \
hurt. Since then every roof job needs a second person on site, and the vans carry new warning \
lights for reversing.

For the fourth quarter the office plans to hire two more technicians, to train every technician \
on the new refrigerant rules that apply from January, and to replace the four oldest vans with \
electric ones. __P1__ will lead the training, and __P3__ will manage the purchase of the vans. \
The office expects to serve about __N3__ customers by the end of the year.
"""

_COMPANIES = ("Northwind Cooling", "Harbor Climate", "Alpine Air Systems", "Delta Heating")
_CITIES = ("Leeds", "Lyon", "Utrecht", "Graz", "Porto", "Aarhus", "Brno", "Turin")
_PEOPLE = ("Anna Berg", "Tomas Novak", "Maria Costa", "Jonas Weber", "Lena Fischer",
           "Pieter de Vries", "Sara Lind", "Marco Rossi", "Eva Horvat", "Karl Olsen")  # fmt: skip
_QUESTIONS = (
    "What happened to the warehouse in August, and why did it take longer than planned?",
    "Who took over the service desk, and what changed for customers?",
    "Why did costs rise over the quarter?",
    "What does the office plan for the fourth quarter?",
    "Where did the growth in customers come from?",
    "What did customers say in the survey, and what was their most common complaint?",
    "What safety incidents happened, and what changed afterwards?",
)

_FIRST = ("Anna", "Tomas", "Maria", "Jonas", "Lena", "Pieter", "Sara", "Marco", "Eva", "Karl",
          "Olga", "Hugo", "Ines", "Nils", "Rita", "Paul")  # fmt: skip
_LAST = ("Berg", "Novak", "Costa", "Weber", "Fischer", "Vries", "Lind", "Rossi", "Horvat",
         "Olsen", "Meyer", "Silva", "Dumont", "Kowalski")  # fmt: skip
_DEPTS = ("Sales", "Service", "Finance", "Warehouse", "IT", "Training")

_CHATS = (
    "What makes a good team meeting?",
    "Why do cats sleep so much?",
    "How should I plan a week of holidays in the mountains?",
    "What are the pros and cons of working from home?",
    "How do I start learning to play the guitar?",
    "Why is the sky blue?",
    "What should I keep in mind when buying a used car?",
    "How can a small office save energy in winter?",
    "What is a good way to learn a new language as an adult?",
    "How do I write a polite email declining a meeting?",
    "What are some healthy breakfasts that take five minutes?",
    "How do bees make honey?",
    "What should a new manager do in the first month?",
    "Why do some people find it hard to sleep?",
    "How do I keep houseplants alive?",
    "What is the difference between weather and climate?",
)


def _code_edit(rng: random.Random) -> str:
    names = {
        "__FN__": rng.choice(_FNS),
        "__ITEMS__": rng.choice(_ITEMS),
        "__REC__": rng.choice(_RECS),
        "__TOTAL__": rng.choice(_TOTALS),
        "__KEY__": rng.choice(_KEYS),
        "__OUT__": rng.choice(_OUTS),
    }
    code = _fill(_CODE, names)
    change = rng.choice(_CHANGES).format(n=rng.choice((5, 20, 25, 50)), items=names["__ITEMS__"])
    return (
        "Here is a Python function:\n\n```python\n" + code + "```\n\n"
        f"Return the whole function with one change: {change}. "
        "Keep everything else exactly as it is, and answer with the code only."
    )


def _extraction(rng: random.Random) -> str:
    people = rng.sample(_PEOPLE, 3)
    cities = rng.sample(_CITIES, 2)
    n2 = rng.randrange(300, 900)
    values = {
        "__CO__": rng.choice(_COMPANIES),
        "__CITY__": cities[0],
        "__CITY2__": cities[1],
        "__P1__": people[0],
        "__P2__": people[1],
        "__P3__": people[2],
        "__N1__": str(n2 + rng.randrange(20, 200)),
        "__N2__": str(n2),
        "__N3__": str(n2 + rng.randrange(200, 400)),
        "__PCT__": str(rng.randrange(3, 15)),
    }
    return (
        _fill(_REPORT, values) + "\nAnswer the question below by quoting, word for word, the "
        "sentences of the report that answer it, and nothing else.\n\nQuestion: "
        + rng.choice(_QUESTIONS)
    )


def _json(rng: random.Random) -> str:
    lines = ["| id | name | department | city | start date | salary |", "|---" * 6 + "|"]
    for i in range(15):
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        date = f"20{rng.randrange(10, 26)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
        lines.append(
            f"| {101 + i + rng.randrange(0, 3) * 100} | {name} | {rng.choice(_DEPTS)} | "
            f"{rng.choice(_CITIES)} | {date} | {rng.randrange(32, 95) * 1000} |"
        )
    return (
        "Convert this table to JSON: an array with one object per row, keys id, name, "
        "department, city, start_date and salary (id and salary as numbers). Answer with the "
        "JSON only.\n\n" + "\n".join(lines) + "\n"
    )


def _chat(rng: random.Random) -> str:
    return rng.choice(_CHATS)


_MAKERS = {"code_edit": _code_edit, "extraction": _extraction, "json": _json, "chat": _chat}


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def prompt(workload: str, key: str) -> str:
    """The user message of request `key` of `workload`: the same key gives the same text."""
    # String seeds hash with SHA-512 in `random`: stable across processes and PYTHONHASHSEED.
    return _MAKERS[workload](random.Random(f"{workload}/{key}"))
