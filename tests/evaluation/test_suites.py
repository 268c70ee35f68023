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


def test_cases_carry_references_labels_and_metadata(tmp_path):
    path = write(
        tmp_path,
        {**GOOD, "expected": ["first answer", "second answer"], "label": 4},
        {**GOOD, "id": "b", "label": 2.5, "metadata": {"source": "sts-b", "pair": [1, 2]}},
        {**GOOD, "id": "c"},
    )
    suite = load_suite(path)
    a, b, c = suite.cases
    assert a.expected == "first answer" and a.references == ("first answer", "second answer")
    assert a.label == 4.0 and isinstance(a.label, float)
    assert b.references == ("answer",) and b.metadata == {"source": "sts-b", "pair": [1, 2]}
    assert c.label is None and c.metadata is None
    assert suite.label_kind == "number" and suite.unlabelled == ["c"]
    hash(a)  # metadata does not make a case unhashable


def test_suite_frame_round_trips_through_parquet(tmp_path):
    import pandas as pd

    from flowstone.evaluation.suites import suite_from_frame, suite_to_frame

    for labels in ([3, None], ["pos", None], [None, None]):
        path = write(
            tmp_path,
            {**GOOD, "expected": ["x", "y"], "label": labels[0], "metadata": {"k": "ü"}},
            {**GOOD, "id": "b", "label": labels[1]},
        )
        suite = load_suite(path)
        stored = tmp_path / "suite.parquet"
        suite_to_frame(suite).to_parquet(stored)
        again = suite_from_frame("s", pd.read_parquet(stored))
        assert again.cases == suite.cases
        assert again.cases[0].metadata == {"k": "ü"}


def test_a_frame_stored_before_references_and_labels_still_loads():
    import pandas as pd

    from flowstone.evaluation.suites import suite_from_frame

    old = pd.DataFrame(
        {"id": ["a"], "input": ["q"], "expected": ["x"], "context": [None], "tags": [["t"]]}
    )
    (case,) = suite_from_frame("s", old).cases
    assert case.references == ("x",) and case.label is None and case.metadata is None


@pytest.mark.parametrize(
    ("lines", "line", "field", "message"),
    [
        ([GOOD, {**GOOD, "id": "b", "label": [1, 2]}], 2, "label", "got a list"),
        ([GOOD, {**GOOD, "id": "b", "label": True}], 2, "label", "got a boolean"),
        ([GOOD, {**GOOD, "id": "b", "label": {"x": 1}}], 2, "label", "got an object"),
        ([GOOD, {**GOOD, "id": "b", "label": " "}], 2, "label", "must not be empty"),
        ([GOOD, '{"id": "b", "input": "q", "expected": "a", "label": NaN}'], 2, "label", "finite"),
        (
            [{**GOOD, "label": 1}, {**GOOD, "id": "b"}, {**GOOD, "id": "c", "label": "pos"}],
            3,
            "label",
            "line 1 has a numeric one",
        ),
        ([GOOD, {**GOOD, "id": "b", "metadata": [1]}], 2, "metadata", "must be a JSON object"),
        ([GOOD, {**GOOD, "id": "b", "expected": []}], 2, "expected", "non-empty list"),
        ([GOOD, {**GOOD, "id": "b", "expected": ["a", 3]}], 2, "expected", "non-empty strings"),
        ([GOOD, {**GOOD, "id": "b", "expected": {"a": 1}}], 2, "expected", "list of strings"),
        (
            [GOOD, {**GOOD, "id": "b", "gold": 1}],
            2,
            "gold",
            "allowed fields: id, input, expected, context, tags, label, metadata",
        ),
    ],
)
def test_bad_labels_metadata_and_references_name_file_and_line(
    tmp_path, lines, line, field, message
):
    path = write(tmp_path, *lines)
    with pytest.raises(SuiteError, match=message) as err:
        load_suite(path)
    assert (err.value.line, err.value.field) == (line, field)
    assert str(path) in str(err.value)
