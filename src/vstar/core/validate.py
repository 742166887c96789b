"""Declarative checks of config fields: each typed config lists a rule per field, one line each.

    RULES = {"lr": positive, "dropout": fraction, "decoder": one_of("beam", "sample", "ved"),
             "ks": list_of(at_least(1), nonempty=True), "budget": optional(at_least(1))}

    def validate(self, prefix="rl"):
        check_fields(self, prefix, self.RULES)                 # ranges, enumerations, types
        require(self.n_embd % self.n_head == 0, f"{prefix}.n_head", self.n_head,
                f"a divisor of n_embd={self.n_embd}")          # cross-field rules

A failed rule is an ``InputError`` naming the field, the value and what was expected:
``field 'rl.lr': got -1.0, expected a number > 0``. Adding a field to a config means adding one
entry to its ``RULES`` (``tests/core/test_core_validate.py`` checks that every numeric field has one).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from vstar.core.errors import InputError


@dataclass(frozen=True)
class Rule:
    """``ok(value) -> bool`` and the words for what is expected (``"an integer >= 1"``; a
    function giving them for a registry that may still grow)."""

    ok: Callable[[Any], bool]
    words: str | Callable[[], str]

    @property
    def expected(self) -> str:
        return self.words() if callable(self.words) else self.words

    def __call__(self, value: Any) -> bool:
        try:
            return bool(self.ok(value))
        except (TypeError, ValueError):
            return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def at_least(lo: float, *, integer: bool = True) -> Rule:
    """An integer (or, with ``integer=False``, a finite number) >= ``lo``."""
    kind = "an integer" if integer else "a number"
    return Rule(lambda v: (_is_int(v) if integer else _is_number(v)) and v >= lo,
                f"{kind} >= {lo:g}")


def greater(lo: float) -> Rule:
    """A finite number > ``lo``."""
    return Rule(lambda v: _is_number(v) and v > lo, f"a number > {lo:g}")


def between(lo: float, hi: float, *, hi_open: bool = False, integer: bool = False) -> Rule:
    """A finite number in [lo, hi] (or [lo, hi) with ``hi_open``)."""
    kind = "an integer" if integer else "a number"
    return Rule(lambda v: (_is_int(v) if integer else _is_number(v)) and lo <= v
                and (v < hi if hi_open else v <= hi),
                f"{kind} in [{lo:g}, {hi:g}{')' if hi_open else ']'}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"one of {list(choices)}")


def registered(names: Callable[[], Iterable[str]]) -> Rule:
    """One of the names ``names()`` returns when the check runs (e.g. a registry's keys)."""
    return Rule(lambda v: v in set(names()), lambda: f"one of {sorted(names())}")


def optional(rule: Rule) -> Rule:
    """None, or a value ``rule`` accepts."""
    return Rule(lambda v: v is None or rule(v), f"null or {rule.expected}")


def list_of(rule: Rule, *, nonempty: bool = False, unique: bool = False,
            length: int | None = None) -> Rule:
    """A list whose every element ``rule`` accepts."""
    words = [w for w in ("non-empty" if nonempty else "", "duplicate-free" if unique else "")
             if w]
    size = f" of {length} items" if length is not None else ""

    def expected() -> str:
        return f"a {' '.join(words + ['list'])}{size}, each {rule.expected}"

    def ok(v: Any) -> bool:
        if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Iterable):
            return False
        v = list(v)
        return ((not nonempty or len(v) > 0) and (length is None or len(v) == length)
                and (not unique or len(set(map(repr, v))) == len(v)) and all(rule(x) for x in v))
    return Rule(ok, expected)


def text(*, nonempty: bool = True) -> Rule:
    return Rule(lambda v: isinstance(v, str) and (bool(v.strip()) or not nonempty),
                "a non-empty string" if nonempty else "a string")


def boolean() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "true or false")


# the rules most fields use
number = Rule(_is_number, "a finite number")
positive = greater(0)                          # learning rates, clipping norms, temperatures
non_negative = at_least(0, integer=False)      # weights of loss terms, weight decay
count = at_least(1)                            # batch sizes, epochs, widths, threads
non_negative_int = at_least(0)                 # warm-up steps, k-core, "0 = off" switches
fraction = between(0.0, 1.0, hi_open=True)     # dropout, label smoothing
probability = between(0.0, 1.0)


def check_fields(obj: Any, prefix: str, rules: Mapping[str, Rule]) -> None:
    """InputError naming ``<prefix>.<field>`` for the first field of ``obj`` a rule rejects."""
    for name, rule in rules.items():
        value = getattr(obj, name)
        if not rule(value):
            raise InputError(f"got {_show(value)}, expected {rule.expected}",
                             field=f"{prefix}.{name}")


def require(condition: bool, field: str, value: Any, expected: str) -> None:
    """A cross-field rule: InputError naming ``field`` and ``value`` unless ``condition``."""
    if not condition:
        raise InputError(f"got {_show(value)}, expected {expected}", field=field)


def unruled_fields(cls: type, rules: Mapping[str, Rule]) -> list[str]:
    """Numeric or string fields of dataclass ``cls`` without a rule (nested configs excluded)."""
    out = []
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        if f.name in rules:
            continue
        if any(t in kind for t in ("int", "float", "str")):
            out.append(f.name)
    return out


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)
