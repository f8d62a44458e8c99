"""Reading the records of a data file, and naming its columns as claim fields.

``--data`` takes the paper's JSON list (``.json``), JSON Lines (``.jsonl``), CSV (``.csv``), Parquet
(``.parquet``) or a folder written by ``datasets``' ``Dataset.save_to_disk``. The JSON list is read as it
always was; the others are read by the ``datasets`` library, offline, with its cache in a temporary folder that
is removed once the records are read, so nothing is downloaded and nothing is left beside the data or in the
repository. ``--columns question=q,choice=answer_text`` maps a file's column names onto the claim fields.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from core.errors import UserError

Record = dict[str, Any]

# The fields a record may give, under these names, to a testbed (testbeds.py reads them).
CLAIM_FIELDS = ("question", "choice", "choice_2", "answer", "cot", "label", "consistency_id", "consistency_key")
# Read by the datasets library: suffix -> (its builder, the format's name for messages).
TABLE_FORMATS = {".jsonl": ("json", "JSON Lines"), ".csv": ("csv", "CSV"), ".parquet": ("parquet", "Parquet")}
FORMATS_READ = "a JSON list (.json), JSON Lines (.jsonl), CSV (.csv), Parquet (.parquet) or a folder written by Dataset.save_to_disk"
# Fields read as text verbatim from a CSV, which pandas would otherwise read as numbers ("4.50" as 4.5).
TEXT_FIELDS = ("question", "choice", "choice_2", "answer", "cot", "consistency_key")
# Fields that a table reader gives as floats when a cell is empty (pandas reads an integer column with a gap as
# float): whole numbers there are read back as integers.
NUMBER_FIELDS = ("label", "consistency_id", "consistency_key")


class DataError(UserError):
    """Input data that can't be used; the message names the file, record or field and the fix."""


def parse_columns(spec: str) -> dict[str, str]:
    """``--columns`` as {claim field: column}: ``"question=q,choice=answer_text"`` -> {"question": "q", ...}.

    Raises DataError for a pair without ``=``, a field that is not a claim field, a field given twice, or a
    column given to two fields.
    """
    mapping: dict[str, str] = {}
    field_of: dict[str, str] = {}
    for item in spec.split(","):
        field, equals, column = (part.strip() for part in item.partition("="))
        if not (field and equals and column):
            raise DataError(f"--columns {spec!r}: write FIELD=COLUMN pairs separated by commas, "
                            "e.g. --columns question=q,choice=answer_text")
        if field not in CLAIM_FIELDS:
            raise DataError(f"--columns {field}={column}: {field!r} is not a claim field; map columns onto "
                            f"{', '.join(CLAIM_FIELDS)}")
        if field in mapping:
            raise DataError(f"--columns maps {field} twice (to {mapping[field]!r} and {column!r}): give each field one column")
        if column in field_of:
            raise DataError(f"--columns maps column {column!r} onto both {field_of[column]} and {field}: "
                            "a column goes to one field")
        mapping[field], field_of[column] = column, field
    return mapping


def read_records(path: Path, columns: Optional[Mapping[str, str]] = None) -> list[Record]:
    """The records of ``path``, in file order, with ``columns`` ({field: column}) renamed to their fields.

    Raises DataError with a one-line reason for a file that is missing, empty, unreadable or of another
    format, and for a mapped column the file doesn't have.
    """
    if not path.exists() or (path.suffix.lower() == ".json" and not path.is_dir()):
        records = read_json_records(path)
        available = {name for record in records if isinstance(record, dict) for name in record}
        return _rename_columns(records, columns, available, path) if columns else records
    if path.is_dir():
        records, available = _read_saved_dataset(path)
    elif path.suffix.lower() in TABLE_FORMATS:
        text_columns = [(columns or {}).get(field, field) for field in TEXT_FIELDS]
        records, available = _read_table(path, *TABLE_FORMATS[path.suffix.lower()], text_columns)
    else:
        raise DataError(f"{path}: can't tell its format from the name: --data reads {FORMATS_READ}")
    return _whole_numbers(_rename_columns(records, columns, available, path) if columns else records)


def read_json_records(path: Path) -> list[Record]:
    """The records of a JSON file that holds one list of them (the paper's release format)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; check --data / --data-dir")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the file as UTF-8 JSON") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read; a record is a flat object of text fields") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of records, found a {type(records).__name__}")
    if not records:
        raise DataError(f"{path}: the list of records is empty")
    return records


def _rename_columns(records: list[Record], columns: Mapping[str, str], available: set[str], path: Path) -> list[Record]:
    """Each record with its mapped columns under their field names. A column already named like a mapped field
    gives way to the column mapped onto it."""
    for field, column in columns.items():
        if column not in available:
            shown = ", ".join(sorted(available)[:20]) + (", ..." if len(available) > 20 else "")
            raise DataError(f"{path}: no column {column!r} for --columns {field}={column}; its columns are {shown}")
    replaced = set(columns) | set(columns.values())
    renamed = []
    for record in records:
        if not isinstance(record, dict):
            renamed.append(record)  # reported by the schema checks, with its position
            continue
        row = {name: value for name, value in record.items() if name not in replaced}
        row.update({field: record[column] for field, column in columns.items() if column in record})
        renamed.append(row)
    return renamed


def _read_table(path: Path, builder: str, name: str, text_columns: list[str]) -> tuple[list[Record], set[str]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file; check --data")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    with _offline_datasets() as (datasets, cache):
        read = {"json": datasets.Dataset.from_json, "parquet": datasets.Dataset.from_parquet,
                "csv": lambda *args, **kwargs: datasets.Dataset.from_csv(
                    *args, converters={column: str for column in text_columns}, **kwargs)}[builder]
        try:
            table = read(str(path), cache_dir=cache, keep_in_memory=True)
            records = table.to_list()
        except Exception as exc:  # noqa: BLE001  (the library raises whatever its parser, pandas or pyarrow, raised)
            raise DataError(_unreadable(path, name, exc)) from None
    return _records_or_refuse(records, path), set(table.column_names)


def _read_saved_dataset(path: Path) -> tuple[list[Record], set[str]]:
    splits = path / "dataset_dict.json"
    if splits.is_file():
        try:
            names = json.loads(splits.read_text(encoding="utf-8")).get("splits") or []
        except (ValueError, AttributeError):
            names = []
        example = f" (e.g. {path / names[0]})" if names else ""
        raise DataError(f"{path} holds a DatasetDict with splits {', '.join(map(str, names)) or '(none)'}: "
                        f"point --data at one split's folder{example}")
    if not (path / "state.json").is_file():
        raise DataError(f"{path} is a folder, but not one written by Dataset.save_to_disk (no state.json in it): "
                        f"--data reads {FORMATS_READ}")
    with _offline_datasets() as (datasets, _):
        try:
            table = datasets.load_from_disk(str(path), keep_in_memory=True)
            records = table.to_list()
        except Exception as exc:  # noqa: BLE001  (as above)
            raise DataError(_unreadable(path, "a saved dataset", exc)) from None
    return _records_or_refuse(records, path), set(table.column_names)


@contextlib.contextmanager
def _offline_datasets() -> Iterator[tuple[Any, str]]:
    """The datasets module, told to stay offline and to keep quiet, and a cache folder that is gone afterwards."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets  # imported here: it takes seconds, and a JSON list doesn't need it

    verbosity = datasets.logging.get_verbosity()
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs a parse failure as well as raising it
    datasets.disable_progress_bars()
    try:
        with tempfile.TemporaryDirectory(prefix="icm-datasets-") as cache:
            yield datasets, cache
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _unreadable(path: Path, name: str, exc: Exception) -> str:
    # The library wraps the parser's error; the parser's says what is wrong with the file.
    cause = exc.__cause__ if exc.__cause__ is not None and type(exc).__name__ == "DatasetGenerationError" else exc
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if "corresponds to no data" in text:
        return f"{path}: holds no records"
    if isinstance(cause, UnicodeDecodeError):
        return f"{path}: not UTF-8 text; save the {name} file as UTF-8"
    return f"{path}: can't be read as {name} ({type(cause).__name__}: {text[:300]})"


def _records_or_refuse(records: list[Record], path: Path) -> list[Record]:
    if not records:
        raise DataError(f"{path}: holds no records")
    return records


def _whole_numbers(records: list[Record]) -> list[Record]:
    """Read back as integers the number fields that a table reader turned into floats (1.0) because of an
    empty cell; a column holding any other number is left as it is, for the schema checks to name."""
    for field in NUMBER_FIELDS:
        values = [r.get(field) for r in records if isinstance(r.get(field), float) and not math.isnan(r[field])]
        if values and all(v.is_integer() for v in values) and all(
                r.get(field) is None or isinstance(r.get(field), float) for r in records):
            for record in records:
                value = record.get(field)
                if isinstance(value, float) and value.is_integer():
                    record[field] = int(value)
    return records
