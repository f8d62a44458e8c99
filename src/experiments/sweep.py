r"""Run ICM (or a baseline labeller) over a grid of settings; each cell an ordinary run directory under OUT.

    python src/experiments/sweep.py --out results/sweep1 --seeds 1 2 3 --labellers icm bootstrap-consistency \
        --alphas 30 --true-shares 0.2 0.5 --testbeds truthfulQA -- --batch_size 16 --num_seed 4 --K 50 --data-dir DIR
    python src/experiments/sweep.py --out results/sweep1 --list            # the cells, by index, and their state
    python src/experiments/sweep.py --out results/sweep1 --cell 3          # one cell (a Slurm array task)
    python src/experiments/sweep.py --out results/sweep1 --aggregate       # sweep.csv, sweep_summary.csv, sweep.png

The flags after -- are ICM.py's, shared by every cell (checked by ICM.py's own parser). The same command again
skips finished cells and resumes unfinished ones; a command that adds values to an axis extends the sweep; any
other change of grid or flags is refused. Without a grid, the command works on the sweep recorded in OUT.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.process_exit import exit_process
from src.cli.cli_errors import OneLineParser, UsageError, run_main
from src.cli.cli_numbers import Bounded
from src.run_directory.run_directory import atomic_path
from src.sweep.aggregate import SWEEP_CSV, SWEEP_SUMMARY_CSV, aggregate
from src.sweep.cell_runs import CellOutcome, CellProcesses, cell_state, check_cells, log_path, run_in_process
from src.sweep.grid import AXES, Cell, parse_axes
from src.sweep.sweep_record import SWEEP_FILE, Sweep, new_sweep, settle, shared_from_flags
from src.sweep.sweep_figure import sweep_figure

SWEEP_FIGURE = "sweep.png"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="sweep.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           usage="%(prog)s --out OUT [grid] [--list | --cell I | --aggregate] [--jobs N] [-- ICM.py flags]")
    parser.add_argument("--out", type=Path, required=True, help="the sweep's folder: sweep.json and one folder per cell")
    for axis in AXES:
        parser.add_argument(axis.sweep_flag, dest=axis.setting, nargs="+", metavar="V",
                            help=f"values of ICM.py's {axis.run_flag}" + (" (none: no subsampling)"
                                                                          if axis.setting == "true_share" else ""))
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="print the cells (index, state, folder) and stop; writes nothing")
    what.add_argument("--cell", type=int, default=None, action=Bounded, at_least=0, metavar="I",
                      help="run only cell I (0-based, as --list numbers them), e.g. --cell $SLURM_ARRAY_TASK_ID")
    what.add_argument("--aggregate", action="store_true",
                      help=f"only write {SWEEP_CSV}, {SWEEP_SUMMARY_CSV} and {SWEEP_FIGURE} from the cells as they are")
    parser.add_argument("--jobs", type=int, default=1, action=Bounded, at_least=1,
                        help="cells run at once, each an ICM.py process against the same endpoints (1: one after "
                             "another, in this process)")
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], Optional[list[str]]]:
    """The sweep's own flags, and ICM.py's after the first ``--`` (None when there is no ``--``)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, None
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(lambda: sweep_command(list(sys.argv[1:] if argv is None else argv)))


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sweep_command(argv: list[str]) -> int:
    own, shared_flags = split_argv(argv)
    args = build_parser().parse_args(own)
    axes = parse_axes({axis.setting: getattr(args, axis.setting) for axis in AXES})
    shared, command_flags = shared_from_flags(shared_flags or [], axes)
    asked: Optional[Sweep] = None
    if axes or shared:
        asked = new_sweep(args.out, axes, shared, shared_flags or [], command_flags)
    sweep, added = settle(args.out, asked, record=False, command_flags=command_flags)
    if args.list:
        for cell in sweep.cells:
            print(f"{cell.index}\t{cell_state(sweep.cell_dir(cell))}\t{cell.name}")
        return 0
    if args.aggregate:
        write_aggregate(sweep)
        return 0
    check_cells(sweep, sweep.cells)  # before sweep.json is written: a sweep with a bad cell is not recorded
    sweep, added = settle(args.out, asked, record=True, command_flags=command_flags)
    if added and added < len(sweep.cells):
        note(f"extending the sweep in {args.out}: {added} new cell(s), now {len(sweep.cells)}")
    if args.cell is not None and args.cell >= len(sweep.cells):
        raise UsageError(f"--cell {args.cell}: the sweep in {args.out} has {len(sweep.cells)} cells, "
                         f"0 to {len(sweep.cells) - 1} (see --list)")
    cells = sweep.cells if args.cell is None else [sweep.cells[args.cell]]
    to_run = []
    for cell in cells:
        state = cell_state(sweep.cell_dir(cell))
        if state == "done":
            note(f"cell {cell.index} ({cell.name}): done, skipped")
        else:
            to_run.append(cell)
    outcomes = run_cells(sweep, to_run, args.jobs)
    return finish(sweep, outcomes, whole_sweep=args.cell is None)


def run_cells(sweep: Sweep, cells: list[Cell], jobs: int) -> list[CellOutcome]:
    if jobs > 1 and len(cells) > 1:
        return CellProcesses(sweep, jobs, note).run(cells)
    outcomes = []
    for cell in cells:
        state = cell_state(sweep.cell_dir(cell))
        note(f"cell {cell.index} ({cell.name}): {'resuming' if state == 'partial' else 'starting'}")
        outcome = run_in_process(sweep, cell)
        outcomes.append(outcome)
        if outcome.code != 0 and not outcome.busy:
            break  # a failure or a stop ends the sweep; the same command resumes it
    return outcomes


def finish(sweep: Sweep, outcomes: list[CellOutcome], whole_sweep: bool) -> int:
    """Report what the cells did; aggregate when every cell of the sweep is done. The exit code: a stop's, else
    2 if a cell failed, else 0."""
    for outcome in outcomes:
        if outcome.busy:
            note(f"note: cell {outcome.cell.index} ({outcome.cell.name}) is being run by another process: {outcome.message}")
    stopped = [o for o in outcomes if o.code > 2]
    failed = [o for o in outcomes if o.code == 2 and not o.busy]
    left = [c for c in sweep.cells if cell_state(sweep.cell_dir(c)) != "done"]
    if stopped:
        note(f"stopped: {len(left)} cell(s) not done; run the same command again to resume them")
        return stopped[0].code
    if failed:
        first = failed[0]
        where = f" (its output: {log_path(sweep, first.cell)})" if log_path(sweep, first.cell).is_file() else ""
        print(f"error: cell {first.cell.index} ({first.cell.name}): {first.message}{where}. "
              f"{len(left)} cell(s) not done; fix that, then run the same command again to resume", file=sys.stderr)
        return 2
    if left:
        if whole_sweep:
            note(f"{len(left)} cell(s) are not done (run by another process); aggregate once they are: "
                 f"python src/experiments/sweep.py --out {sweep.out} --aggregate")
        return 0
    if whole_sweep:
        write_aggregate(sweep)
    return 0


def write_aggregate(sweep: Sweep) -> None:
    """sweep.csv, sweep_summary.csv and sweep.png in OUT, from the cells as they are now."""
    if not (sweep.out / SWEEP_FILE).is_file():
        raise UsageError(f"--out {sweep.out} holds no {SWEEP_FILE}: nothing to aggregate yet")
    results, summary = aggregate(sweep)
    with atomic_path(sweep.out / SWEEP_FIGURE) as temporary:
        sweep_figure(results, summary, temporary)
    done = sum(r.row["state"] == "done" for r in results)
    note(f"wrote {sweep.out}/{SWEEP_CSV}, {SWEEP_SUMMARY_CSV}, {SWEEP_FIGURE} ({done} of {len(results)} cells done)")


if __name__ == "__main__":
    exit_process(main())
