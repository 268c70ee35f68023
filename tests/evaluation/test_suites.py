"""Bad suite input fails loudly with the file, the line and the field."""

import json

import pytest

from flowstone.errors import SuiteError
from flowstone.evaluation.suites import discover_suites, load_suite

GOOD = {"id": "a", "input": "question?", "expected": "answer", "tags": ["t"]}


def write(tmp_path, *lines, name="s.jsonl"):
    path = tmp_path / name
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


def test_good_suite_loads_every_case(tmp_path):
    path = write(tmp_path, GOOD, {**GOOD, "id": "b", "context": "ctx"})
    suite = load_suite(path)
    assert [c.id for c in suite.cases] == ["a", "b"]
    assert suite.cases[1].context == "ctx" and suite.cases[0].tags == ("t",)
    assert len(suite.sha256) == 64


@pytest.mark.parametrize(
    ("lines", "line", "field", "message"),
    [
        ([GOOD, '{"id": "b", "input": "x", '], 2, None, "not valid JSON"),
        ([GOOD, {"id": "b", "input": "x"}], 2, "expected", "missing required field"),
        ([GOOD, {**GOOD, "id": "b", "expected": 3}], 2, "expected", "must be a string"),
        ([GOOD, {**GOOD, "id": "b", "input": "  "}], 2, "input", "must not be empty"),
        ([GOOD, GOOD], 2, "id", "duplicate id 'a' \\(first on line 1\\)"),
        ([GOOD, {**GOOD, "id": "c", "tags": "t"}], 2, "tags", "list of non-empty strings"),
        ([GOOD, {**GOOD, "id": "c", "answer": "x"}], 2, "answer", "unknown field"),
        ([GOOD, [1, 2]], 2, None, "must be a JSON object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, lines, line, field, message):
    path = write(tmp_path, *lines)
    with pytest.raises(SuiteError, match=message) as err:
        load_suite(path)
    assert err.value.line == line
    assert err.value.field == field
    assert str(path) in str(err.value)
    assert f"line {line}" in str(err.value)


def test_empty_suite_is_refused(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(SuiteError, match="the suite is empty"):
        load_suite(path)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(SuiteError, match="not valid UTF-8") as err:
        load_suite(path)
    assert err.value.line == 2


def test_suite_names_must_be_partition_safe(tmp_path):
    write(tmp_path, GOOD, name="Bad Name.jsonl")
    with pytest.raises(SuiteError, match="partition key"):
        discover_suites(tmp_path)


def test_shipped_suites_are_real_and_large_enough(repo_root):
    suites = discover_suites(repo_root / "suites")
    assert {"qa", "summarisation", "paraphrase"} <= set(suites)
    for name, path in suites.items():
        suite = load_suite(path, name)
        assert len(suite) >= 30, f"{name} has only {len(suite)} cases"
    for case in load_suite(suites["qa"]).cases:
        assert case.context and case.expected.lower() in case.context.lower(), case.id
