"""Valid ranges of numeric settings: one check for every CLI option (a typer callback) and the Python API alike.

Zero is a value, not "absent": callers test `is None` for "use the default" (`x or default` turned --epochs 0
into 30 epochs). NaN and infinity are never in a range.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from lkca_runtime.errors import UserError


def _number(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is outside the range
    high_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        """E.g. "an integer >= 1", "a number in (0, 100]"."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_number(self.high)}"
        return f"a finite {kind.split()[-1]}"

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def problem(self, value) -> str | None:
        """None when `value` is in range; else what is wrong, in words that name the range."""
        return None if self.holds(value) else f"{value!r} is out of range: give {self.describe()}"


POSITIVE_INT = Range(1, integer=True)
NON_NEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)  # agreements, shares
PERCENTILE = Range(0, 100, low_open=True)
POINTS = Range(0, 100)  # accuracy drops, in percentage points
OPSET = Range(7, integer=True)  # older opsets: no backend here runs them (docs/backend-limits.md)


def check(name: str, value, valid: Range):
    """`value` when in range (None passes: "use the default"); a UserError naming `name` and the range."""
    if value is None:
        return None
    problem = valid.problem(value)
    if problem:
        raise UserError(f"{name}: {problem}")
    return value


def int_list(name: str, text: str, valid: Range = POSITIVE_INT) -> list[int]:
    """'1,32' -> [1, 32]; a UserError naming `name` for anything that is not a list of integers in range."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"{name}: {text!r} is not a comma-separated list of integers "
                        f"(each {valid.describe()}), e.g. 1,32") from None
    for value in values:
        check(name, value, valid)
    return values


def option(default, help: str, valid: Range, **kwargs):
    """A typer.Option whose value is checked against `valid` as it is parsed: one line with the range, exit 2."""
    import typer

    def callback(value):
        if value is None:
            return value
        problem = valid.problem(value)
        if problem:
            raise typer.BadParameter(problem)
        return value

    return typer.Option(default, help=help, callback=callback, **kwargs)


def int_list_option(default: str, help: str, valid: Range = POSITIVE_INT, **kwargs):
    """A typer.Option for '1,32'-style lists; the command receives list[int]."""
    import typer

    def callback(value):
        try:
            return int_list("", value, valid)
        except UserError as e:
            raise typer.BadParameter(str(e).removeprefix(": ")) from None

    return typer.Option(default, help=help, callback=callback, **kwargs)
