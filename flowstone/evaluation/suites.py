"""Evaluation suites: JSONL files of cases, loaded strictly.

A suite is the fixed yardstick every system is measured against, so a malformed file must
never be half-read: loading either returns every case or raises a `SuiteError` that names the
file, the line and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flowstone.cases import Case, Label
from flowstone.errors import SuiteError

REQUIRED_FIELDS = ("id", "input", "expected")
OPTIONAL_FIELDS = ("context", "tags", "label", "metadata")
ALLOWED_FIELDS = ", ".join((*REQUIRED_FIELDS, *OPTIONAL_FIELDS))
# What a suite's labels are: numbers (gold scores) or strings (classes), never a mix.
LabelKind = Literal["number", "class"]
SUITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,62}$")


@dataclass(frozen=True)
class Suite:
    """A named, ordered set of cases and the hash of the file they came from."""

    name: str
    path: Path
    cases: tuple[Case, ...]
    sha256: str = field(repr=False)

    def __len__(self) -> int:
        return len(self.cases)

    @property
    def tags(self) -> list[str]:
        return sorted({tag for case in self.cases for tag in case.tags})

    @property
    def label_kind(self) -> LabelKind | None:
        """What the labelled cases carry (the loader refuses a mix); None when none has one."""
        for case in self.cases:
            if case.label is not None:
                return label_kind(case.label)
        return None

    @property
    def unlabelled(self) -> list[str]:
        """Ids of the cases without a label, in suite order."""
        return [case.id for case in self.cases if case.label is None]


def label_kind(label: Label) -> LabelKind:
    return "class" if isinstance(label, str) else "number"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def discover_suites(folder: Path) -> dict[str, Path]:
    """Map suite name (the file stem) to path for every ``*.jsonl`` in ``folder``."""
    if not folder.is_dir():
        raise SuiteError(folder, "the suites folder does not exist (set FLOWSTONE_SUITES_DIR)")
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*.jsonl")):
        if not SUITE_NAME.match(path.stem):
            raise SuiteError(
                path,
                "a suite file name must be lower-case letters, digits, '-' or '_' "
                "(it becomes a Dagster partition key)",
            )
        found[path.stem] = path
    if not found:
        raise SuiteError(folder, "no *.jsonl suite files found")
    return found


def _require_text(path: Path, line_no: int, record: dict, name: str) -> str:
    if name not in record:
        raise SuiteError(path, "missing required field", line_no, name)
    value = record[name]
    if not isinstance(value, str):
        raise SuiteError(path, f"must be a string, got {type(value).__name__}", line_no, name)
    if not value.strip():
        raise SuiteError(path, "must not be empty", line_no, name)
    return value


def _references(path: Path, line_no: int, record: dict) -> tuple[str, ...]:
    """``expected`` as one string or a non-empty list of them (several acceptable answers)."""
    value = record.get("expected")
    if value is not None and not isinstance(value, str | list):
        raise SuiteError(
            path,
            f"must be a string or a list of strings (several references), got {_json_type(value)}",
            line_no,
            "expected",
        )
    if not isinstance(value, list):
        return (_require_text(path, line_no, record, "expected"),)
    if not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise SuiteError(
            path,
            "must be a string or a non-empty list of non-empty strings (several references)",
            line_no,
            "expected",
        )
    return tuple(value)


def _label(path: Path, line_no: int, record: dict) -> Label | None:
    value = record.get("label")
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            raise SuiteError(path, "must not be empty", line_no, "label")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise SuiteError(path, f"must be a finite number, got {value}", line_no, "label")
        return float(value)
    raise SuiteError(
        path,
        f"must be a number (a gold score) or a string (a class), got {_json_type(value)}",
        line_no,
        "label",
    )


def _metadata(path: Path, line_no: int, record: dict) -> dict[str, Any] | None:
    value = record.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SuiteError(
            path, f"must be a JSON object, got {_json_type(value)}", line_no, "metadata"
        )
    return value


def _json_type(value: object) -> str:
    names = {bool: "a boolean", list: "a list", dict: "an object", str: "a string"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number" if isinstance(value, int | float) else type(value).__name__


def _parse_case(path: Path, line_no: int, record: object) -> Case:
    if not isinstance(record, dict):
        raise SuiteError(
            path, f"a case must be a JSON object, got {type(record).__name__}", line_no
        )
    unknown = set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise SuiteError(
            path, f"unknown field; allowed fields: {ALLOWED_FIELDS}", line_no, sorted(unknown)[0]
        )
    case_id, text = (_require_text(path, line_no, record, f) for f in ("id", "input"))
    references = _references(path, line_no, record)
    context = record.get("context")
    if context is not None and not isinstance(context, str):
        raise SuiteError(path, "must be a string or absent", line_no, "context")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise SuiteError(path, "must be a list of non-empty strings", line_no, "tags")
    return Case(
        id=case_id,
        input=text,
        expected=references[0],
        context=context,
        tags=tuple(tags),
        references=references,
        label=_label(path, line_no, record),
        metadata=_metadata(path, line_no, record),
    )


_KIND_WORDS: dict[LabelKind, str] = {"number": "numeric", "class": "string (class)"}


def parse_lines(path: Path, lines: Iterable[str]) -> list[Case]:
    """Parse JSONL text, failing on the first bad line with its number (1-based)."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
    first_label: tuple[LabelKind, int] | None = None
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SuiteError(
                path, f"not valid JSON ({exc.msg} at column {exc.colno})", line_no
            ) from None
        case = _parse_case(path, line_no, record)
        if case.id in seen:
            raise SuiteError(
                path, f"duplicate id '{case.id}' (first on line {seen[case.id]})", line_no, "id"
            )
        seen[case.id] = line_no
        if case.label is not None:
            kind = label_kind(case.label)
            if first_label is None:
                first_label = (kind, line_no)
            elif kind != first_label[0]:
                raise SuiteError(
                    path,
                    f"a {_KIND_WORDS[kind]} label, but line {first_label[1]} has a "
                    f"{_KIND_WORDS[first_label[0]]} one: a suite's labels are all numbers "
                    "(gold scores) or all strings (classes)",
                    line_no,
                    "label",
                )
        cases.append(case)
    if not cases:
        raise SuiteError(path, "the suite is empty: add at least one case")
    return cases


def load_suite(path: Path, name: str | None = None) -> Suite:
    """Load and validate one suite file completely, or raise `SuiteError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteError(path, f"cannot read the suite file ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data[: exc.start].count(b"\n") + 1
        raise SuiteError(path, "not valid UTF-8", line_no) from None
    cases = parse_lines(path, text.splitlines())
    return Suite(
        name=name or path.stem,
        path=path,
        cases=tuple(cases),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def suite_to_frame(suite: Suite):
    """The suite as a table (one row a case), the form it takes between assets."""
    import pandas as pd

    return pd.DataFrame(
        {
            "id": [c.id for c in suite.cases],
            "input": [c.input for c in suite.cases],
            "expected": [c.expected for c in suite.cases],
            "context": [c.context for c in suite.cases],
            "tags": [list(c.tags) for c in suite.cases],
            "references": [list(c.references) for c in suite.cases],
            "label": [c.label for c in suite.cases],
            "metadata": [metadata_json(c.metadata) for c in suite.cases],
        }
    )


def metadata_json(metadata: object) -> str | None:
    """A case's metadata as the JSON text frames carry (Parquet has no free-form objects)."""
    return None if metadata is None else json.dumps(metadata, ensure_ascii=False)


def _label_from_cell(value: object) -> Label | None:
    if value is None or isinstance(value, str):
        return value
    number = float(value)  # type: ignore[arg-type]  # a numpy or Python number from the frame
    return None if math.isnan(number) else number


def suite_from_frame(name: str, frame, path: Path | None = None, sha256: str = "") -> Suite:
    """Rebuild a `Suite` from `suite_to_frame`'s table (a frame stored before references,
    labels and metadata existed rebuilds with none)."""
    cases = tuple(
        Case(
            id=row["id"],
            input=row["input"],
            expected=row["expected"],
            context=row["context"] if isinstance(row["context"], str) else None,
            tags=tuple(row["tags"]) if row["tags"] is not None else (),
            references=tuple(str(r) for r in refs)
            if (refs := row.get("references")) is not None
            else (),
            label=_label_from_cell(row.get("label")),
            metadata=json.loads(row["metadata"]) if isinstance(row.get("metadata"), str) else None,
        )
        for row in frame.to_dict(orient="records")
    )
    return Suite(name=name, path=path or Path(name), cases=cases, sha256=sha256)
