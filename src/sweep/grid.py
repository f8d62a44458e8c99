"""The grid of a sweep: its axes (settings of RunConfig given several values), its cells and their names.

    axes = parse_axes({"seed": ["1", "2"], "alpha": ["30"]})     # typed and checked by ICM.py's own parser
    cells = expand(axes, testbed="truthfulQA")                     # [Cell(0, ...seed=1), Cell(1, ...seed=2)]
    cells[0].name                                                   # "truthfulQA/alpha=30,seed=1"

The cells are the product of the axes in AXES order, the seed varying fastest, so the seeds of one setting are
neighbours in a listing and in a Slurm array.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from src.cli.cli_errors import UsageError, UserError
from src.config.run_flags import build_parser


@dataclass(frozen=True)
class Axis:
    setting: str  # the RunConfig setting it varies (run.json's name)
    sweep_flag: str  # the sweep's flag for its values
    run_flag: str  # ICM.py's flag for one value


# The order of this tuple is the order of the product and of a cell's name.
AXES: tuple[Axis, ...] = (
    Axis("testbed", "--testbeds", "--testbed"),
    Axis("labeller", "--labellers", "--labeller"),
    Axis("alpha", "--alphas", "--alpha"),
    Axis("true_share", "--true-shares", "--true-share"),
    Axis("seed", "--seeds", "--seed"),
)
AXIS_BY_SETTING = {axis.setting: axis for axis in AXES}
NO_TRUE_SHARE = "none"  # --true-shares none: the pool as drawn, without subsampling by gold


def format_value(value: Any) -> str:
    """A value as a cell's name and ICM.py's flag spell it: 30.0 -> "30", 0.2 -> "0.2", None -> "none"."""
    if value is None:
        return NO_TRUE_SHARE
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_value(axis: Axis, text: str) -> Any:
    """One value of ``axis``, typed and range-checked by ICM.py's parser (the same checks and messages as the
    flag of a single run). Raises UsageError naming the sweep's flag."""
    if axis.setting == "true_share" and text.lower() == NO_TRUE_SHARE:
        return None
    try:
        parsed = build_parser().parse_args([axis.run_flag, text])
    except UserError as exc:
        raise UsageError(f"{axis.sweep_flag} {text}: {exc}") from None
    return getattr(parsed, axis.setting)


def parse_axes(given: Mapping[str, Optional[Sequence[str]]]) -> dict[str, list[Any]]:
    """The axes given (setting -> its values as typed on the command line; None or absent: not an axis), typed,
    in AXES order. A value listed twice is refused: it would name two cells alike."""
    axes: dict[str, list[Any]] = {}
    for axis in AXES:
        texts = given.get(axis.setting)
        if not texts:
            continue
        values = [parse_value(axis, text) for text in texts]
        for value in values:
            if values.count(value) > 1:
                raise UsageError(f"{axis.sweep_flag} lists {format_value(value)} twice; give each value once")
        axes[axis.setting] = values
    return axes


@dataclass(frozen=True)
class Cell:
    """One run of the sweep: ``values`` holds the axes' values (only the axes of the grid); ``testbed`` is the
    cell's testbed, whether an axis or the shared flags' (it is the top folder of every cell)."""
    index: int
    testbed: str
    values: dict[str, Any]

    @property
    def name(self) -> str:
        """The cell's folder under the sweep's OUT: ``<testbed>/<axis>=<value>,...`` (``run`` when only the
        testbed varies or nothing does)."""
        parts = [f"{setting}={format_value(value)}" for setting, value in self.values.items() if setting != "testbed"]
        return f"{self.testbed}/{','.join(parts) or 'run'}"

    def flags(self) -> list[str]:
        """ICM.py's flags that give this cell its axes' values."""
        argv: list[str] = []
        for setting, value in self.values.items():
            if value is not None:  # true_share none: the flag left out
                argv += [AXIS_BY_SETTING[setting].run_flag, format_value(value)]
        return argv

    def key(self) -> tuple:
        return tuple((setting, self.values[setting]) for setting in sorted(self.values))


def expand(axes: Mapping[str, Sequence[Any]], testbed: str, start: int = 0) -> list[Cell]:
    """Every combination of the axes' values, in AXES order with the last axis fastest, indexed from ``start``.
    ``testbed``: the testbed of every cell when it is not an axis."""
    names = [axis.setting for axis in AXES if axis.setting in axes]
    cells = []
    for offset, combination in enumerate(itertools.product(*(axes[name] for name in names))):
        values = dict(zip(names, combination))
        cells.append(Cell(start + offset, values.get("testbed", testbed), values))
    return cells

