"""``--where`` expressions: which devices a rollout or a pin applies to, by what they report.

A small language, parsed by hand (never ``eval``) within bounds on length, tokens and depth::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" expr ")" | comparison
    comparison := NAME ("==" | "!=") STRING | NAME ["not"] "in" "(" STRING ("," STRING)* [","] ")"

``NAME`` is an attribute: ``runtime`` (or ``runtimes``: the runtimes the device can run),
``recipe`` (or ``recipes``: the recipes it accepts), ``app_version``, ``channel``, or any other name,
which is a free-form label key (``region``). ``STRING`` is quoted with ``'`` or ``"`` and holds no
quote of its kind and no backslash. A multi-valued attribute (runtimes, recipes) matches ``==`` and
``in`` when any of its values does, ``!=`` and ``not in`` when none does. A label the device did not
send has no value: ``==`` and ``in`` are false, ``!=`` and ``not in`` true.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeAlias

from edgerec.errors import TargetingError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_CHARS",
    "Attributes",
    "Expression",
    "matches",
    "parse",
]

MAX_EXPRESSION_CHARS = 1024
MAX_TOKENS = 256
MAX_DEPTH = 16
MAX_STRING_CHARS = 128
MAX_IN_VALUES = 64

_MULTI = {"runtime": "runtimes", "runtimes": "runtimes", "recipe": "recipes", "recipes": "recipes"}
_SINGLE = {"app_version", "channel"}
_KEYWORDS = {"and", "or", "not", "in"}
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'[^'\\]*'|"[^"\\]*")
      | (?P<op>==|!=|\(|\)|,)
      | (?P<name>[A-Za-z0-9_][A-Za-z0-9._-]*)
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Attributes:
    """What one device reported, as expressions read it."""

    runtimes: tuple[str, ...] = ()
    recipes: tuple[str, ...] = ()
    app_version: str = ""
    channel: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def values(self, name: str) -> tuple[str, ...]:
        """The values of attribute ``name`` (empty: the device has none)."""
        if name in _MULTI:
            return self.runtimes if _MULTI[name] == "runtimes" else self.recipes
        if name in _SINGLE:
            return (self.app_version,) if name == "app_version" else (self.channel,)
        value = self.labels.get(name)
        return () if value is None else (value,)


# A parsed expression: ("cmp", name, op, values) | ("not", e) | ("and", e, e) | ("or", e, e)
Node: TypeAlias = tuple[object, ...]


@dataclass(frozen=True)
class Expression:
    """A parsed ``--where`` expression; ``source`` is the text it came from."""

    source: str
    tree: Node

    def matches(self, attributes: Attributes) -> bool:
        """Whether a device with ``attributes`` is selected."""
        return _evaluate(self.tree, attributes)


def parse(text: str) -> Expression:
    """Parse ``text``; TargetingError (one line, naming the position) when it is not an expression."""
    if not isinstance(text, str):
        raise TargetingError(f"a targeting expression is text, got {type(text).__name__}")
    return _parse_cached(text)


def matches(where: str, attributes: Attributes) -> bool:
    """Whether ``where`` selects a device with ``attributes`` (an empty ``where`` selects every device)."""
    return not where or parse(where).matches(attributes)


@lru_cache(maxsize=256)
def _parse_cached(text: str) -> Expression:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise TargetingError(f"targeting expression of {len(text)} characters; at most {MAX_EXPRESSION_CHARS}")
    if not text.isprintable():
        raise TargetingError("targeting expression holds control characters")
    parser = _Parser(_tokenize(text))
    tree = parser.expression(0)
    if parser.position != len(parser.tokens):
        raise TargetingError(f"unexpected {parser.tokens[parser.position][1]!r} in targeting expression")
    return Expression(text, tree)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise TargetingError(
                f"cannot read the targeting expression at character {position + 1}: {text[position : position + 20]!r}"
            )
        kind = match.lastgroup or ""
        value = match.group(kind)
        if kind == "string":
            value = value[1:-1]
            if len(value) > MAX_STRING_CHARS:
                raise TargetingError(f"a string of {len(value)} characters; at most {MAX_STRING_CHARS}")
        elif kind == "name" and value in _KEYWORDS:
            kind = "keyword"
        tokens.append((kind, value))
        if len(tokens) > MAX_TOKENS:
            raise TargetingError(f"targeting expression of more than {MAX_TOKENS} tokens")
        position = match.end()
    if not tokens:
        raise TargetingError("empty targeting expression")
    return tokens


class _Parser:
    def __init__(self, tokens: Sequence[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def _peek(self) -> tuple[str, str]:
        return self.tokens[self.position] if self.position < len(self.tokens) else ("end", "")

    def _take(self, kind: str, value: str | None = None) -> str:
        found_kind, found = self._peek()
        if found_kind != kind or (value is not None and found != value):
            wanted = repr(value) if value is not None else f"a {kind}"
            shown = "the end" if found_kind == "end" else repr(found)
            raise TargetingError(f"expected {wanted} in targeting expression, found {shown}")
        self.position += 1
        return found

    def _is(self, kind: str, value: str) -> bool:
        return self._peek() == (kind, value)

    def expression(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise TargetingError(f"targeting expression nests deeper than {MAX_DEPTH}")
        node = self._and(depth)
        while self._is("keyword", "or"):
            self.position += 1
            node = ("or", node, self._and(depth))
        return node

    def _and(self, depth: int) -> Node:
        node = self._not(depth)
        while self._is("keyword", "and"):
            self.position += 1
            node = ("and", node, self._not(depth))
        return node

    def _not(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise TargetingError(f"targeting expression nests deeper than {MAX_DEPTH}")
        if self._is("keyword", "not"):
            self.position += 1
            return ("not", self._not(depth + 1))
        if self._is("op", "("):
            self.position += 1
            node = self.expression(depth + 1)
            self._take("op", ")")
            return node
        return self._comparison()

    def _comparison(self) -> Node:
        name = self._take("name")
        kind, value = self._peek()
        if kind == "op" and value in ("==", "!="):
            self.position += 1
            return ("cmp", name, value, (self._take("string"),))
        negate = self._is("keyword", "not")
        if negate:
            self.position += 1
        self._take("keyword", "in")
        self._take("op", "(")
        values = [self._take("string")]
        while self._is("op", ","):
            self.position += 1
            if self._is("op", ")"):
                break
            values.append(self._take("string"))
            if len(values) > MAX_IN_VALUES:
                raise TargetingError(f"more than {MAX_IN_VALUES} values in one 'in' list")
        self._take("op", ")")
        return ("cmp", name, "not in" if negate else "in", tuple(values))


def _evaluate(node: Node, attributes: Attributes) -> bool:
    kind = node[0]
    if kind == "cmp":
        _, name, op, wanted = node
        assert isinstance(name, str) and isinstance(wanted, tuple)
        hit = any(v in wanted for v in attributes.values(name))
        return hit if op in ("==", "in") else not hit
    if kind == "not":
        return not _evaluate(node[1], attributes)  # type: ignore[arg-type]
    left, right = node[1], node[2]
    if kind == "and":
        return _evaluate(left, attributes) and _evaluate(right, attributes)  # type: ignore[arg-type]
    return _evaluate(left, attributes) or _evaluate(right, attributes)  # type: ignore[arg-type]
