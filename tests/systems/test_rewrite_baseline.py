"""The rule paraphraser changes structure, never meaning, and leaves alone what it cannot move
safely."""

import pytest

from flowstone.cases import Case
from flowstone.systems.rewrite import RuleParaphraser, expand_contractions, move_clause


@pytest.mark.parametrize(
    ("sentence", "rewritten"),
    [
        (
            "Although it was raining, we went for a walk.",
            "We went for a walk although it was raining.",
        ),
        (
            "Because the server ran out of memory, the job failed.",
            "The job failed because the server ran out of memory.",
        ),
        (
            "The app crashes whenever I try to upload a photo.",
            "Whenever I try to upload a photo, the app crashes.",
        ),
        (
            "Please remember to lock the door when you leave.",
            "When you leave, please remember to lock the door.",
        ),
        ("I read while she cooked.", "While she cooked, I read."),
        # a noun or a name first: lower-casing it needs a tagger, so the sentence stays
        ("Water expands when it freezes.", "Water expands when it freezes."),
        ("Mercury is hot since it is near the Sun.", "Mercury is hot since it is near the Sun."),
        # "because of" opens a phrase, not a clause
        ("Because of the fog, we stayed.", "Because of the fog, we stayed."),
        ("What is the capital of Australia?", "What is the capital of Australia?"),
    ],
)
def test_clause_moves_to_the_other_end(sentence, rewritten):
    assert move_clause(sentence) == rewritten


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("I'm too tired.", "I am too tired."),
        ("It's raining.", "It is raining."),
        ("It’s been a long day.", "It has been a long day."),
        ("Let's go.", "Let us go."),
        ("We can't stay and they won't wait.", "We cannot stay and they will not wait."),
        ("Don't forget.", "Do not forget."),
        (
            "The dog's bone is in the neighbours' garden.",
            "The dog's bone is in the neighbours' garden.",
        ),
    ],
)
def test_contractions_are_spelt_out_and_possessives_stay(text, expanded):
    assert expand_contractions(text) == expanded


def test_system_rewrites_every_sentence_of_the_input():
    case = Case(id="p", input="If you book early, you'll pay less. It's cheap.", expected="x")
    out = RuleParaphraser().predict([case])[0].output
    assert out == "You will pay less if you book early. It is cheap."
