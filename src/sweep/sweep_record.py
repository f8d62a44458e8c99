"""A sweep's record, OUT/sweep.json: its grid, the ICM.py settings every cell shares, and its cells in order.

The record makes a sweep one thing on disk: the same command again resumes it, ``--cell I`` means the same run in
every job of a Slurm array, and a command with another grid is refused rather than mixed into it. One change is
allowed, because it is what a researcher does next: **adding values** to the axes (more seeds, another alpha).
The new cells are appended after the recorded ones, so every recorded cell keeps its index and folder. Dropping
a value, adding or removing an axis, or changing a shared setting is refused with what differs, unless no cell
has started yet (a first attempt that failed on a wrong flag): then the new command replaces the record.

    {"format": 1, "axes": {"labeller": ["icm"], "seed": [1, 2]}, "shared_flags": ["--K", "50", ...],
     "shared_settings": {"K": 50, "data_dir": "/abs/path", ...},
     "cells": [{"index": 0, "name": "truthfulQA/labeller=icm,seed=1", "testbed": "truthfulQA",
                "values": {"labeller": "icm", "seed": 1}}, ...]}

``shared_settings`` holds the settings given after ``--`` (not their defaults), paths made absolute, so a job
started from another folder runs the same cells; the cells' flags are built from it, not from the text typed.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from src.cli.cli_errors import UsageError, UserError
from src.config.run_config import RunConfig, flag
from src.config.run_flags import build_parser, passed_flags
from src.run_directory.run_directory import RUN_MARKERS, write_atomically
from src.run_directory.run_reading import read_json_object
from src.sweep.grid import AXES, AXIS_BY_SETTING, Cell, expand, format_value

SWEEP_FILE = "sweep.json"
SWEEP_LOCK = ".sweep.lock"
LOGS_DIR = "logs"  # --jobs: each cell's output, logs/cell-<index>.log
FORMAT = 1
# ICM.py flags the sweep sets for each cell itself.
SWEEP_OWNED = ("output_dir", "resume", "overwrite")
# Flags after -- that are about this command, not the sweep: they may differ between invocations (a Slurm job's
# --no-progress) and are not recorded.
COMMAND_ONLY = ("no_progress", "secrets")
LOCK_WAIT_SECONDS = 60  # another job of the same sweep writes sweep.json for a moment; never longer


class SweepMismatch(UsageError):
    """The command's grid or shared flags are not those of the sweep recorded in OUT."""


@dataclass
class Sweep:
    out: Path
    axes: dict[str, list[Any]]  # setting -> values, only the axes of the grid, in AXES order
    shared_settings: dict[str, Any]  # the settings given after --, as JSON values (paths absolute)
    shared_flags: list[str]  # the flags after -- as typed (for the record; the cells use shared_settings)
    cells: list[Cell] = field(default_factory=list)
    command_flags: list[str] = field(default_factory=list)  # this command's COMMAND_ONLY flags

    def cell_dir(self, cell: Cell) -> Path:
        return self.out / cell.name

    def cell_argv(self, cell: Cell) -> list[str]:
        """ICM.py's flags for ``cell``'s run, without the output folder: the shared settings, then the axes."""
        return [*settings_argv(self.shared_settings), *cell.flags(), *self.command_flags]

    def cell_config(self, cell: Cell) -> RunConfig:
        return RunConfig.from_args(build_parser().parse_args(self.cell_argv(cell)))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "axes": self.axes, "shared_flags": self.shared_flags,
                "shared_settings": self.shared_settings,
                "cells": [{"index": c.index, "name": c.name, "testbed": c.testbed, "values": c.values} for c in self.cells]}


def jsonable(value: Any) -> Any:
    return os.path.abspath(value) if isinstance(value, Path) else value


def settings_argv(settings: dict[str, Any]) -> list[str]:
    """ICM.py flags that give these settings (setting name -> JSON value), spelled as build_parser spells them."""
    actions = {}
    for action in build_parser()._actions:
        if action.option_strings:
            actions.setdefault(action.dest, []).append(action)
    argv: list[str] = []
    for name, value in settings.items():
        first = actions[name][0]
        if first.nargs == 0:  # a switch: store_true, or the route's store_const pair (--use-vllm / --no-vllm)
            argv += [a.option_strings[0] for a in actions[name] if value is not None and a.const == value][:1]
        elif value is not None:
            argv += [first.option_strings[0], format_value(value)]
    return argv


def shared_from_flags(shared_flags: Sequence[str], axes: dict[str, list[Any]]) -> tuple[dict[str, Any], list[str]]:
    """The settings given after ``--`` (checked by ICM.py's own parser, so the same errors) and this command's
    COMMAND_ONLY flags. An axis of the grid, or a flag the sweep sets per cell, given there is refused by name."""
    parser = build_parser()
    parser.prog = "ICM.py"  # its errors send the user to ICM.py's --help, whose flags these are
    try:
        parsed = parser.parse_args(list(shared_flags))
    except UserError as exc:
        raise UsageError(f"after --: {exc}") from None
    passed = passed_flags(list(shared_flags))
    for name in sorted(passed & set(axes)):
        axis = AXIS_BY_SETTING[name]
        raise UsageError(f"{axis.run_flag} after -- is an axis of this sweep ({axis.sweep_flag}): give its values "
                         f"with {axis.sweep_flag} only")
    for name in SWEEP_OWNED:
        if name in passed:
            raise UsageError(f"{flag(name)} after --: the sweep chooses each cell's folder under --out itself "
                             "(and resumes unfinished cells); drop it")
    settings = {name: jsonable(getattr(parsed, name)) for name in build_parser_order() if name in passed
                and name not in COMMAND_ONLY}
    command = settings_argv({name: jsonable(getattr(parsed, name)) for name in COMMAND_ONLY if name in passed})
    return settings, command


def build_parser_order() -> list[str]:
    """Setting names in the parser's order, so sweep.json lists them as --help does."""
    seen: list[str] = []
    for action in build_parser()._actions:
        if action.option_strings and action.dest not in seen and action.dest != "help":
            seen.append(action.dest)
    return seen


def new_sweep(out: Path, axes: dict[str, list[Any]], shared_settings: dict[str, Any], shared_flags: Sequence[str],
              command_flags: Sequence[str]) -> Sweep:
    testbed = shared_settings.get("testbed", RunConfig().data.testbed)
    return Sweep(out, axes, shared_settings, list(shared_flags), expand(axes, testbed), list(command_flags))


def read_sweep(out: Path) -> Optional[Sweep]:
    """OUT's recorded sweep; None if OUT has no sweep.json. UserError if it is damaged."""
    path = out / SWEEP_FILE
    if not path.is_file():
        return None
    advice = "restore it from a copy (the cells' run directories beside it are intact)"
    record = read_json_object(path, advice)
    if record.get("format") != FORMAT:
        raise UserError(f"{path} has format {record.get('format')!r}; this version reads format {FORMAT}: {advice}")
    try:
        axes = {name: list(values) for name, values in record["axes"].items()}
        cells = [Cell(int(c["index"]), str(c["testbed"]), dict(c["values"])) for c in record["cells"]]
        shared, flags = dict(record["shared_settings"]), [str(f) for f in record["shared_flags"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is damaged (missing or malformed {exc}): {advice}") from None
    unknown = [name for name in axes if name not in AXIS_BY_SETTING]
    if unknown or [c.index for c in cells] != list(range(len(cells))):
        raise UserError(f"{path} is damaged ({'unknown axis ' + unknown[0] if unknown else 'cells out of order'}): {advice}")
    return Sweep(out, axes, shared, flags, cells)


def write_sweep(sweep: Sweep) -> None:
    write_atomically(sweep.out / SWEEP_FILE, json.dumps(sweep.to_json(), indent=2) + "\n")


@contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Held while sweep.json is read and written, so the jobs of one Slurm array don't each write their own.
    Waits at most LOCK_WAIT_SECONDS (the holder only writes one small file)."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(f"{out / SWEEP_LOCK} stayed locked for {LOCK_WAIT_SECONDS} s by another sweep "
                                    "command: check for a hung one and stop it, then run this again") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def refuse_foreign_folder(out: Path) -> None:
    """A new sweep goes in a new or empty folder: not in a run's folder, nor among unrelated files, where its cells
    would mix with them."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file; name a folder for the sweep")
    if any((out / marker).exists() for marker in RUN_MARKERS):
        raise UsageError(f"--out {out} holds an ICM run, not a sweep; choose a new folder for the sweep")
    others = sorted(p.name for p in out.iterdir() if p.name != SWEEP_LOCK)
    if others:
        raise UsageError(f"--out {out} holds other files and no {SWEEP_FILE} ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); choose a new or empty folder for the sweep")


def differences(recorded: Sweep, asked: Sweep) -> list[str]:
    """What makes ``asked`` (this command's grid and flags) not the recorded sweep nor an extension of it."""
    found = []
    if list(recorded.axes) != list(asked.axes):
        def named(axes):
            return " ".join(AXIS_BY_SETTING[a].sweep_flag for a in axes) or "no axis"
        found.append(f"it varies {named(recorded.axes)}, this command {named(asked.axes)}")
    else:
        for name, values in recorded.axes.items():
            dropped = [format_value(v) for v in values if v not in asked.axes[name]]
            if dropped:
                found.append(f"its {AXIS_BY_SETTING[name].sweep_flag} also holds {' '.join(dropped)}, which this "
                             "command leaves out (a sweep can gain values, never lose them)")
    for name in sorted(set(recorded.shared_settings) | set(asked.shared_settings)):
        was, now = recorded.shared_settings.get(name), asked.shared_settings.get(name)
        if was != now:
            show = (lambda v: "not given" if v is None else repr(v))
            found.append(f"its {flag(name)} is {show(was)}, this command's {show(now)}")
    return found


def any_cell_started(sweep: Sweep) -> bool:
    """Whether any cell's folder holds (some of) a run."""
    return any((sweep.cell_dir(cell) / marker).exists() for cell in sweep.cells for marker in RUN_MARKERS)


def extended(recorded: Sweep, asked: Sweep) -> Sweep:
    """``recorded`` with the values ``asked`` adds: its cells first, unchanged, then the new ones."""
    axes = {name: values + [v for v in asked.axes[name] if v not in values] for name, values in recorded.axes.items()}
    known = {cell.key() for cell in recorded.cells}
    testbed = recorded.shared_settings.get("testbed", RunConfig().data.testbed)
    new = [cell for cell in expand(axes, testbed) if cell.key() not in known]
    cells = recorded.cells + [Cell(len(recorded.cells) + i, cell.testbed, cell.values) for i, cell in enumerate(new)]
    return Sweep(recorded.out, axes, recorded.shared_settings, recorded.shared_flags, cells, asked.command_flags)


def settle(out: Path, asked: Optional[Sweep], *, record: bool, command_flags: Sequence[str] = ()) -> tuple[Sweep, int]:
    """The sweep this command works on and how many cells it adds to OUT's record. ``asked``: the grid and flags
    given, or None to use the recorded sweep. With ``record``, a new or extended sweep is written to sweep.json
    (under its lock); without (--list), nothing is written. Raises SweepMismatch when ``asked`` neither is the
    recorded sweep nor extends it, UsageError when there is nothing to run."""
    def settle_locked() -> tuple[Sweep, int]:
        recorded = read_sweep(out)
        if recorded is None:
            if asked is None:
                axes = " ".join(a.sweep_flag for a in AXES)
                raise UsageError(f"--out {out} holds no {SWEEP_FILE}: give the grid ({axes}) and the shared ICM.py "
                                 "flags after --")
            refuse_foreign_folder(out)
            if record:
                write_sweep(asked)
            return asked, len(asked.cells)
        if asked is None:
            recorded.command_flags = list(command_flags)
            return recorded, 0
        problems = differences(recorded, asked)
        if problems and not any_cell_started(recorded):
            # Nothing of the recorded sweep exists yet (its first cell failed to start, say on a wrong --data-dir):
            # the corrected command replaces the record rather than being held to the mistake.
            if record:
                write_sweep(asked)
            return asked, len(asked.cells)
        if problems:
            raise SweepMismatch(f"--out {out} holds another sweep: {'; '.join(problems)}. Run its own command (see "
                                f"{out / SWEEP_FILE}), or choose a new --out")
        merged = extended(recorded, asked)
        added = len(merged.cells) - len(recorded.cells)
        if added and record:
            write_sweep(merged)
        return merged, added

    if asked is None and not (out / SWEEP_FILE).is_file():
        return settle_locked()  # refused before the lock makes a folder
    if not record:  # --list reads; it neither writes nor waits
        return settle_locked()
    with sweep_lock(out):
        return settle_locked()
