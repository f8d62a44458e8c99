"""Reading a run's files back, for the companion scripts (evaluate, plot, export, merge).

A damaged file is refused with its name, what is wrong with it and, for JSON Lines, the line, as a UserError
(one ``error:`` line), never a traceback. ``log.jsonl`` is appended line by line, so a crash can cut its last
line short; that line is left out with a note, as ``ICM.py --resume`` does. Every other file is written
atomically (labels.jsonl, summary.json, run.json), so any damage there is refused.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from src.cli.cli_errors import UserError
from src.run_directory.run_directory import RUN_FILE, SUMMARY_FILE, RunDirectory

# How to mend a damaged file of a run: the run's record can only come from a copy; what the run wrote at its
# end (labels, summary), a resume writes again.
RUN_FILE_ADVICE = "restore it from a copy; it records how the run was made"


def rewrite_advice(run_dir: Path) -> str:
    return f"restore it, or write it again with python src/experiments/ICM.py --resume {run_dir}"


def _parse(text: str) -> tuple[Any, str]:
    """The JSON value of ``text``, or (None, why it is not JSON)."""
    try:
        return json.loads(text), ""
    except json.JSONDecodeError as exc:
        return None, f"not JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "nested too deeply"


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is damaged (not UTF-8 text, byte {exc.start}): restore it from a copy") from None


def read_json_object(path: Path, advice: str) -> dict[str, Any]:
    """The JSON object in ``path``. ``advice`` ends the message when it is damaged ("restore it, or ...")."""
    value, why = _parse(_text(path))
    if why:
        raise UserError(f"{path} is damaged ({why}): {advice}")
    if not isinstance(value, dict):
        raise UserError(f"{path} is damaged (it holds {json.dumps(value)[:40]}, not an object): {advice}")
    return value


def read_json_lines(path: Path, advice: str, *, cut_last_line_ok: bool = False,
                    check: Optional[Callable[[dict[str, Any]], str]] = None) -> list[dict[str, Any]]:
    """One JSON object per non-blank line of ``path``. ``check`` says what is wrong with a row that parses, or "".
    With ``cut_last_line_ok`` (an append-only log a crash may have cut short), a damaged last line is left out
    with a note on stderr; any other damaged line is refused with its number."""
    lines = [(number, line) for number, line in enumerate(_text(path).splitlines(), start=1) if line.strip()]
    rows = []
    for position, (number, line) in enumerate(lines):
        value, why = _parse(line)
        if not why and not isinstance(value, dict):
            why = f"it holds {json.dumps(value)[:40]}, not an object"
        if not why and check is not None:
            why = check(value)
        if not why:
            rows.append(value)
            continue
        following = len(lines) - position - 1
        if following == 0 and cut_last_line_ok:
            print(f"note: {path} line {number}, the last, is cut short ({why}), as a crash while writing it leaves it; "
                  "left out", file=sys.stderr)
            break
        where = f"and {following} line(s) follow it" if following else "(the last line)"
        raise UserError(f"{path} line {number} is damaged ({why}) {where}: {advice}")
    return rows


def label_row_problem(row: dict[str, Any]) -> str:
    """What keeps a labels.jsonl row from being used (the fields the companion scripts read), or ""."""
    if row.get("label") not in (True, False, None) or "label" not in row:
        return f"its label is {row.get('label')!r}, not true, false or null"
    if not isinstance(row.get("prompt"), str):
        return "it has no prompt text"
    consistency_id = row.get("consistency_id")
    if not isinstance(consistency_id, (int, str)) or isinstance(consistency_id, bool):
        return f"its consistency_id is {consistency_id!r}"
    for field in ("score", "label_mass"):
        value = row.get(field)
        # Python's json reads NaN and Infinity, which no JSON output of ours may hold.
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            return f"its {field} is {json.dumps(value)}, not a finite number or null"
    return ""


def run_settings(run_dir: Path, required: bool = False) -> dict[str, Any]:
    """The settings a run was made with: run.json's, else summary.json's (a merge's folder has only the latter),
    else {} unless ``required``."""
    files = RunDirectory(run_dir)
    for path, advice in ((files.run_file, RUN_FILE_ADVICE), (files.summary_file, rewrite_advice(run_dir))):
        if path.is_file():
            settings = read_json_object(path, advice).get("settings")
            if isinstance(settings, dict):
                return settings
            if path == files.run_file:
                raise UserError(f"{path} is damaged (no settings): {advice}")
    if required:
        raise UserError(f"{run_dir}: no {RUN_FILE} or {SUMMARY_FILE} to say how the run was made")
    return {}


def run_summary(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's summary.json, None if it wrote none; UserError if it is damaged."""
    path = RunDirectory(run_dir).summary_file
    if not path.is_file():
        return None
    return read_json_object(path, rewrite_advice(run_dir))
