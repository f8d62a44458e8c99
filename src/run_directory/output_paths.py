"""No tool writes over its own inputs, or over a run's own files.

``merge_labels.py s0 s1 s2 s3 --output s0`` once replaced shard 0's labels and summary with the merge. Every
script that writes checks its outputs here first: an output that is an input, lies inside one, or (for a
folder the tool writes into) holds one is refused, and so is a file output that would replace a run's own
file. Paths are compared after resolving symlinks and relative parts, so ``./s0``, ``s0/`` and a link to s0
are all s0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from src.cli.cli_errors import UserError
from src.run_directory.run_directory import MERGE_FILES, RUN_MARKERS, RUN_OWN_FILES, RunDirectory


def real(path: Path) -> Path:
    """``path`` absolute, with symlinks and ``..`` resolved (as far as it exists)."""
    return Path(path).expanduser().resolve()


def is_same_or_inside(path: Path, other: Path) -> bool:
    path, other = real(path), real(other)
    return path == other or other in path.parents


def refuse_writing_over(output: Path, flag: str, inputs: Iterable[tuple[str, Path]], *, folder: bool) -> None:
    """Raise UserError if ``output`` is one of ``inputs`` ((what it is, path) pairs) or lies inside one, or, when
    ``folder`` says the tool writes into ``output``, holds one."""
    for what, path in inputs:
        if real(output) == real(path):
            problem = f"is {what} {path}"
        elif is_same_or_inside(output, path):
            problem = f"lies inside {what} {path}"
        elif folder and is_same_or_inside(path, output):
            problem = f"holds {what} {path}"
        else:
            continue
        raise UserError(f"{flag} {output} {problem}: writing there could destroy it. Choose another {flag}")


def refuse_run_file(output: Path, flag: str) -> None:
    """Raise UserError if the file ``output`` would replace a run's own file (labels.jsonl, summary.json, ...)
    in a folder that holds a run or a merge, or an existing file of that name."""
    folder = real(output).parent
    holds_run = bool(RunDirectory(folder).existing((*RUN_MARKERS, *MERGE_FILES)))
    if Path(output).name in RUN_OWN_FILES and (holds_run or real(output).exists()):
        raise UserError(f"{flag} {output} would replace a run's own {Path(output).name}: choose another {flag}")


def refuse_run_folder(output: Path, flag: str) -> None:
    """Raise UserError if the folder ``output`` holds an ICM.py run, whose labels.jsonl and summary.json a
    tool writing there would replace."""
    found = RunDirectory(Path(output)).existing(RUN_MARKERS)
    if found:
        raise UserError(f"{flag} {output} holds an ICM.py run ({', '.join(found)}); writing there would replace its "
                        f"{' and '.join(MERGE_FILES)}. Choose another {flag}")


def run_files(run_dir: Path) -> list[tuple[str, Path]]:
    """A run's own files, as (what, path) inputs."""
    return [(f"the run's {path.name}", path) for path in RunDirectory(Path(run_dir)).own_files()]


def data_files(data_dir: Optional[Any], data: Optional[Any] = None) -> list[tuple[str, Path]]:
    """The data a run reads, as (what, path) inputs: ``data`` (--data) and the JSON files in ``data_dir``."""
    found = [("the data file", Path(data))] if data else []
    if data_dir and Path(data_dir).is_dir():
        found += [("the data file", path) for path in sorted(Path(data_dir).glob("*.json"))]
    return found


def recorded_data_files(settings: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """The data files named by a run's recorded settings (run.json's ``data`` and ``data_dir``)."""
    return data_files(settings.get("data_dir"), settings.get("data"))
