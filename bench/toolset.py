"""What bench/tools.py asks for: five office tools (enums, nested objects, arrays, required
fields, a date format, numeric bounds, no extra properties), twenty questions that call for
them, and the one tool of the cost measure, whose call cannot close within its tokens."""

from __future__ import annotations

from typing import Any

SYSTEM = "You are the assistant of the Acme office. Act on each request with the tools."

STRING: dict[str, Any] = {"type": "string"}
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD"]


def _tool(name: str, description: str, props: dict[str, Any], required: list[str]) -> Any:
    parameters = {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def _object(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


PERSON = _object({"name": STRING, "email": STRING}, ["name", "email"])

TOOLS: list[dict[str, Any]] = [
    _tool(
        "lookup_order",
        "Look up a customer order by its id (two letters, a dash, five digits).",
        {
            "order_id": STRING,
            "include": {
                "type": "array",
                "items": {"type": "string", "enum": ["items", "shipping", "invoice", "returns"]},
            },
        },
        ["order_id"],
    ),
    _tool(
        "book_meeting",
        "Book a meeting room and invite people.",
        {
            "title": STRING,
            "date": {"type": "string", "format": "date"},
            "start_time": {"type": "string", "description": "HH:MM, 24-hour clock"},
            "duration_minutes": {"type": "integer", "minimum": 15, "maximum": 480},
            "room": {"type": "string", "enum": ["Atlas", "Borealis", "Cosmos", "Delta"]},
            "attendees": {"type": "array", "items": PERSON, "minItems": 1},
        },
        ["title", "date", "start_time", "duration_minutes", "attendees"],
    ),
    _tool(
        "get_weather",
        "The weather forecast for a place.",
        {
            "location": _object({"city": STRING, "country": STRING}, ["city"]),
            "units": {"type": "string", "enum": ["metric", "imperial"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
        },
        ["location", "units"],
    ),
    _tool(
        "create_ticket",
        "Open a helpdesk ticket.",
        {
            "summary": STRING,
            "category": {"type": "string", "enum": ["it", "facilities", "hr", "finance"]},
            "priority": {"type": "string", "enum": ["low", "normal", "high", "urgent"]},
            "reporter": _object({"name": STRING, "department": STRING}, ["name", "department"]),
            "tags": {"type": "array", "items": STRING},
        },
        ["summary", "category", "priority", "reporter"],
    ),
    _tool(
        "convert_currency",
        "Convert an amount of money from one currency to another.",
        {
            "amount": {"type": "number", "exclusiveMinimum": 0},
            "from": {"type": "string", "enum": CURRENCIES},
            "to": {"type": "string", "enum": CURRENCIES},
            "date": {"type": "string", "format": "date"},
        },
        ["amount", "from", "to"],
    ),
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

QUESTIONS = [
    "Where is my order AB-20931? I'd like the shipping status.",
    "Book a 30 minute meeting called 'Budget review' on 2026-12-03 at 10:00 in room Atlas "
    "with Maria Lopez (maria@acme.example).",
    "What will the weather be in Lyon, France for the next 3 days, in Celsius?",
    "The printer on the 3rd floor is jammed again. Please open an urgent facilities ticket; "
    "I'm Tom Becker from sales.",
    "How much is 250 euros in US dollars?",
    "Can you check the invoice and the items of order QZ-11807?",
    "Set up a one hour project kickoff on 2026-12-08 at 09:30 with Ana Silva "
    "(ana@acme.example) and Li Wei (liwei@acme.example).",
    "Is it going to rain in Seattle this week? Use Fahrenheit.",
    "My laptop won't connect to the VPN. File a high priority IT ticket for me, Priya Nair, "
    "engineering.",
    "Convert 1,200 British pounds to Swiss francs at today's rate.",
    "Has order MK-55012 been returned yet?",
    "Schedule the weekly sales sync: 2026-12-10, 15:00, 45 minutes, room Cosmos, with Jon "
    "Park (jon@acme.example).",
    "What's the forecast for Tokyo tomorrow?",
    "HR question: I need a ticket about my parental leave paperwork, normal priority. Name: "
    "Sara Kim, marketing.",
    "I have 98,000 yen left from the trip. What is that in euros?",
    "Track order TR-00417 for me, including shipping.",
    "Book room Delta for an interview on 2026-12-04 at 13:00 for 90 minutes with the "
    "candidate Alex Moreau (alex.moreau@mail.example).",
    "Weather in Cape Town, South Africa for 5 days, metric please.",
    "My expense reimbursement is missing from my payslip; open an urgent finance ticket. "
    "I'm Omar Haddad from operations.",
    "Convert 75.50 Canadian dollars into US dollars.",
]

COST_ITEMS = 12
"""An expense report of at least this many items: ~15 tokens each, so a call cannot close
within the cost measure's 64 tokens and every held answer runs to max_tokens."""
COST_TOOL = _tool(
    "file_expense_report",
    "File an expense report of a business trip.",
    {
        "trip": STRING,
        "items": {
            "type": "array",
            "minItems": COST_ITEMS,
            "items": _object(
                {
                    "date": {"type": "string", "format": "date"},
                    "description": STRING,
                    "category": {
                        "type": "string",
                        "enum": ["travel", "hotel", "meals", "taxi", "other"],
                    },
                    "amount": {"type": "number"},
                    "currency": {"type": "string", "enum": CURRENCIES},
                },
                ["date", "description", "category", "amount", "currency"],
            ),
        },
    },
    ["trip", "items"],
)
COST_ASK = (
    "File the expense report of my trip to Berlin, 3 to 7 November: flights, four hotel "
    "nights, meals every day, taxis to and from the airport, each item on its own line."
)
