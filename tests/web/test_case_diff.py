"""What the diff page calls changed, newly failing and new, decided without a server."""

from flowstone.web.case_diff import CaseDiffFilter, counts, diff_cases
from flowstone.web.records import SystemAnswer


def _answers(rows: dict[str, tuple[str, float | None]]) -> dict[str, SystemAnswer]:
    return {
        case: SystemAnswer("s", output, {"rouge1": score}) for case, (output, score) in rows.items()
    }


def test_cases_are_changed_unchanged_new_or_gone() -> None:
    before = _answers(
        {"a": ("the cat sat", 0.9), "b": ("dog", 0.4), "c": ("x", 0.7), "d": ("y", 1.0)}
    )
    after = _answers(
        {"a": ("the cat stood", 0.3), "b": ("dog", 0.4), "c": ("x", None), "e": ("z", 0.8)}
    )
    changes = diff_cases(before, after, ["rouge1"], {"rouge1": 0.5}, order=["e", "a"])
    by_id = {c.case_id: c for c in changes}
    assert [c.case_id for c in changes] == ["e", "a", "b", "c", "d"]  # suite order, then the rest
    assert {k: c.status for k, c in by_id.items()} == {
        "a": "changed", "b": "unchanged", "c": "changed", "d": "removed", "e": "added",
    }  # fmt: skip
    a = by_id["a"].score("rouge1")
    assert a is not None and a.delta is not None and round(a.delta, 6) == -0.6
    assert by_id["a"].newly_failing == ["rouge1"] and by_id["a"].output_changed
    # an invalid judgement is a change with no delta, never a drop to 0.0
    c = by_id["c"].score("rouge1")
    assert c is not None and c.delta is None and c.changed and by_id["c"].newly_failing == []
    assert counts(changes) == {
        "changed": 2, "added": 1, "removed": 1, "unchanged": 1,
        "newly failing": 1, "newly passing": 0,
    }  # fmt: skip
    segments = [(s.op, s.text) for s in by_id["a"].output_diff()]
    assert segments == [("equal", "the cat "), ("delete", "sat"), ("insert", "stood")]


def test_the_filter_keeps_changed_cases_worst_first() -> None:
    before = _answers({"a": ("1", 0.9), "b": ("2", 0.9), "c": ("3", 0.9)})
    after = _answers({"a": ("1", 0.8), "b": ("2", 0.1), "c": ("3", 0.9)})
    changes = diff_cases(before, after, ["rouge1"], {"rouge1": 0.5})
    assert [c.case_id for c in CaseDiffFilter("rouge1").apply(changes)] == ["b", "a"]
    assert [c.case_id for c in CaseDiffFilter("rouge1", show="newly_failing").apply(changes)] == [
        "b"
    ]
    assert len(CaseDiffFilter("rouge1", show="all", sort="id").apply(changes)) == 3
