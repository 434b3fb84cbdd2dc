"""Declarative checks of config fields: a field states its bounds, ``__post_init__`` enforces them.

A config dataclass writes the allowed values next to the help text, as field metadata that
:func:`llmac.config.option` builds::

    gamma: float = option(1.0, "GAE discount.", range="[0, 1]")  # metadata {"help": ..., "range": ...}
    kl_in: str = option("reward", "...", choices=("reward", "loss"))

and calls :func:`check_fields` (then :func:`require` for checks across fields) in ``__post_init__``.
A range is an interval in the usual notation, ``[`` / ``]`` closed and ``(`` / ``)`` open, ``inf``
for no bound: ``"[0, 1)"``, ``"(0, inf)"``, ``"[1, inf)"``. ``None`` always passes (an unset optional
field). Errors are :class:`~llmac.errors.ConfigError` with one line such as
``PPOConfig.gamma = -1: must be in [0, 1]``.

``choices`` is also an argparse keyword, so ``--kl_in`` is checked (and listed) by the CLI parser too;
``range`` is llmac's own key, which :func:`llmac.config.parse_config` turns into help text.
"""

from __future__ import annotations

import math
import re
from dataclasses import Field, dataclass, fields, is_dataclass
from numbers import Real

from llmac.errors import ConfigError

RANGE = "range"  # metadata key: an interval such as "[0, 1]"
CHOICES = "choices"  # metadata key: the allowed values

_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Interval:
    """The real numbers between ``low`` and ``high``, each end included or not."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> Interval:
        match = _INTERVAL.match(text)
        if match is None:
            raise ValueError(f"bad interval {text!r}: expected e.g. '[0, 1]', '(0, inf)'")
        left, low, high, right = match.groups()
        interval = cls(float(low), float(high), left == "[", right == "]")
        if interval.low > interval.high or (math.isinf(interval.low) and interval.low_closed):
            raise ValueError(f"bad interval {text!r}")
        if math.isinf(interval.high) and interval.high_closed:
            raise ValueError(f"bad interval {text!r}: an infinite end is open")
        return interval

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below  # NaN is in no interval

    def __str__(self) -> str:
        if math.isinf(self.high) and not math.isinf(self.low):
            return f"{'>=' if self.low_closed else '>'} {_number(self.low)}"
        return (
            f"in {'[' if self.low_closed else '('}{_number(self.low)}, "
            f"{_number(self.high)}{']' if self.high_closed else ')'}"
        )


def _number(x: float) -> str:
    return str(int(x)) if x.is_integer() else repr(x)


def checked_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` that declare a ``range`` or ``choices``.

    Fields inherited from another library's dataclass (``TrainingArguments``) are left to its checks.
    """
    foreign = {
        f.name
        for base in cls.__mro__[1:]
        if is_dataclass(base) and not base.__module__.startswith("llmac.")
        for f in fields(base)
    }
    return [
        f for f in fields(cls) if f.name not in foreign and (RANGE in f.metadata or CHOICES in f.metadata)
    ]


def field_problem(f: Field, value: object) -> str | None:
    """What is wrong with ``value`` for field ``f`` (``"must be in [0, 1]"``), or None if nothing."""
    if value is None:
        return None
    if (spec := f.metadata.get(RANGE)) is not None:
        interval = Interval.parse(spec)
        if not isinstance(value, Real) or isinstance(value, bool):
            return f"must be a number {interval}"
        if value not in interval:
            return f"must be {interval}"
    if (choices := f.metadata.get(CHOICES)) is not None and value not in choices:
        return f"must be one of {', '.join(repr(c) for c in choices)}"
    return None


def check_fields(config: object) -> None:
    """Raise :class:`ConfigError` naming every field of ``config`` outside its ``range`` or ``choices``."""
    problems = []
    for f in checked_fields(type(config)):
        value = getattr(config, f.name)
        if (problem := field_problem(f, value)) is not None:
            problems.append(f"{type(config).__name__}.{f.name} = {value!r}: {problem}")
    if problems:
        raise ConfigError("; ".join(problems))


def require(config: object, ok: bool, message: str) -> None:
    """A check across fields: raise ``ConfigError("<Class>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{type(config).__name__}: {message}")


def require_multiple(config: object, name: str, of: str) -> None:
    """Raise ``ConfigError`` unless field ``name`` of ``config`` is a multiple of its field ``of``."""
    value, divisor = getattr(config, name), getattr(config, of)
    require(config, value % divisor == 0, f"{name} ({value}) must be a multiple of {of} ({divisor})")
