"""A pydantic model for the structured-output tests: the daemon's answers (e2e) and the engine's
grammar sampling in-process (unit) are checked against the same schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Cat(BaseModel):
    name: str = Field(max_length=20)
    age: int
    color: Literal["black", "white", "orange"]
    indoor: bool
