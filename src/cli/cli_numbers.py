"""Numeric flags that are checked where they are parsed: a range, and always a finite number.

    parser.add_argument("--alpha", type=float, default=30.0, action=Bounded, above=0, help="... (above 0)")
    parser.add_argument("--K", type=int, default=3000, action=Bounded, at_least=0, help="... (0: ...)")

A number outside its range would otherwise be taken silently: ``--alpha -30`` rewards labels the model
disagrees with, a negative ``--max-demos`` slices from the end, a negative seed is the same seed as its
absolute value. The value is refused as one ``error:`` line naming the flag (a UserError). ``check_bounds``
applies the same ranges to settings that did not come from the command line, such as a resumed run's.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Optional, Sequence

from src.cli.cli_errors import UserError

Number = float  # ints are checked the same way


class Bounded(argparse.Action):
    """Store a number (or each of a list of them, with ``nargs``) after checking it is finite and in range.

    ``at_least`` and ``at_most`` are inclusive bounds, ``above`` an exclusive one. An int flag's ``type=int``
    already refuses fractions."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, at_least: Optional[Number] = None,
                 above: Optional[Number] = None, at_most: Optional[Number] = None, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.at_least, self.above, self.at_most = at_least, above, at_most

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        for value in values if isinstance(values, list) else [values]:
            self.check(value, option_string or self.dest)
        setattr(namespace, self.dest, values)

    def check(self, value: Number, flag: Optional[str] = None) -> None:
        """Raise UserError unless ``value`` is finite and in range."""
        flag = flag or self.option_strings[0]
        if not math.isfinite(value):
            raise UserError(f"{flag} {value} must be a finite number")
        if not self.allows(value):
            raise UserError(f"{flag} {value} {self.range_text()}")

    def allows(self, value: Number) -> bool:
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most))

    def range_text(self) -> str:
        """What the value must be, as the end of a sentence: "must be in (0, 1]", "must not be negative"."""
        low = self.above if self.above is not None else self.at_least
        if self.at_most is not None and low is not None:
            return f"must be in {'(' if self.above is not None else '['}{low:g}, {self.at_most:g}]"
        if self.at_most is not None:
            return f"must be at most {self.at_most:g}"
        if self.above == 0:
            return "must be a positive number"
        if self.at_least == 0:
            return "must not be negative"
        return f"must be above {self.above:g}" if self.above is not None else f"must be at least {self.at_least:g}"


def check_bounds(parser: argparse.ArgumentParser, values: argparse.Namespace) -> None:
    """Apply every Bounded flag's range to ``values`` (for settings read back rather than parsed); None is
    "not given" and passes."""
    for action in parser._actions:
        if isinstance(action, Bounded):
            value = getattr(values, action.dest, None)
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    action.check(item)
