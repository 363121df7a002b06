"""Subjects, descriptions and bodies: Jinja templates over the member's fields, in a sandbox.

A template sees `contact`, `lead` and `owner` (the synced columns of each, by logical name)
and `journey` (`name`). The sandbox gives templates no access to Python internals; undefined is
strict, so a field that is not synced is an error — at validation, never a blank in a sent
e-mail. An empty value renders as nothing: write `{{ contact.firstname or "there" }}`. E-mail
bodies are HTML: the member's values are escaped in them (a name like `<b>` shows as typed).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

NAMESPACES = ("contact", "lead", "owner")
_MISSING = re.compile(r"has no attribute '([^']+)'|'([^']+)' is undefined")


class TemplateProblem(ValueError):
    """A template that cannot render: the message names the field or the syntax error."""


@cache
def _environment(html: bool) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=html, finalize=lambda v: "" if v is None else v
    )


@lru_cache(maxsize=256)
def _template(text: str, html: bool) -> Template:
    """`text` compiled once per run, however many members it renders for."""
    return _environment(html).from_string(text)


def render(text: str, values: Mapping[str, Any], *, html: bool = False) -> str:
    """`text` rendered with `values` (`contact`, `lead`, `owner`, `journey`)."""
    try:
        return _template(text, html).render(values)
    except UndefinedError as exc:
        raise TemplateProblem(_missing(str(exc), values)) from None
    except TemplateError as exc:
        raise TemplateProblem(f"template error: {exc}") from None


def check(text: str, columns: Mapping[str, list[str]], *, html: bool = False) -> str | None:
    """Why `text` cannot render for a member with these synced columns, or None."""
    sample = {name: {column: f"<{name}.{column}>" for column in columns.get(name, [])}
              for name in NAMESPACES}  # fmt: skip
    try:
        render(text, {**sample, "journey": {"name": "sample"}}, html=html)
    except TemplateProblem as problem:
        return str(problem)
    return None


def _missing(message: str, values: Mapping[str, Any]) -> str:
    match = _MISSING.search(message)
    if match is None:
        return f"template error: {message}"
    name = match.group(1) or match.group(2)
    if match.group(2):  # a top-level name
        return f"unknown name '{name}' (use {', '.join(NAMESPACES)} or journey)"
    fields = [f"{ns}.{c}" for ns in NAMESPACES for c in values.get(ns, {}) or {}]
    close = difflib.get_close_matches(name, [f.split(".", 1)[1] for f in fields], n=1)
    suggestion = next((f for f in fields if close and f.endswith("." + close[0])), None)
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    return f"unknown field '{name}': not a synced column{hint}"
