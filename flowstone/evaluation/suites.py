"""Evaluation suites: JSONL files of cases, loaded strictly.

A suite is the fixed yardstick every system is measured against, so a malformed file must
never be half-read: loading either returns every case or raises a `SuiteError` that names the
file, the line and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from flowstone.cases import Case
from flowstone.errors import SuiteError

REQUIRED_FIELDS = ("id", "input", "expected")
OPTIONAL_FIELDS = ("context", "tags")
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


def _parse_case(path: Path, line_no: int, record: object) -> Case:
    if not isinstance(record, dict):
        raise SuiteError(
            path, f"a case must be a JSON object, got {type(record).__name__}", line_no
        )
    unknown = set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise SuiteError(path, "unknown field", line_no, sorted(unknown)[0])
    case_id, text, expected = (_require_text(path, line_no, record, f) for f in REQUIRED_FIELDS)
    context = record.get("context")
    if context is not None and not isinstance(context, str):
        raise SuiteError(path, "must be a string or absent", line_no, "context")
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise SuiteError(path, "must be a list of non-empty strings", line_no, "tags")
    return Case(id=case_id, input=text, expected=expected, context=context, tags=tuple(tags))


def parse_lines(path: Path, lines: Iterable[str]) -> list[Case]:
    """Parse JSONL text, failing on the first bad line with its number (1-based)."""
    cases: list[Case] = []
    seen: dict[str, int] = {}
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
        }
    )


def suite_from_frame(name: str, frame, path: Path | None = None, sha256: str = "") -> Suite:
    """Rebuild a `Suite` from `suite_to_frame`'s table."""
    cases = tuple(
        Case(
            id=row["id"],
            input=row["input"],
            expected=row["expected"],
            context=row["context"] if isinstance(row["context"], str) else None,
            tags=tuple(row["tags"]) if row["tags"] is not None else (),
        )
        for row in frame.to_dict(orient="records")
    )
    return Suite(name=name, path=path or Path(name), cases=cases, sha256=sha256)
