"""A rule-based paraphraser: the same words, another structure.

Why: the extractive baselines have nothing to choose from in a one-sentence input, so on the
paraphrase suite they all hand the input back and tie with echo. A real floor for paraphrase
rewrites without changing the meaning. Word substitution needs a thesaurus this project does
not ship (nearest neighbours in MiniLM's vocabulary were tried: they swap late for early and
Thursday for Friday), so this baseline changes structure only, with rules that keep meaning:

- an adverbial clause moves to the other end of its sentence ("Although it rained, we walked."
  <-> "We walked, although it rained."), only where the moved words need no change of case
  beyond the sentence's first letter;
- contractions are spelt out ("I'm" -> "I am", "don't" -> "do not").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flowstone.cases import Case
from flowstone.systems.base import Prediction, Progress, System, answer_each
from flowstone.text import sentences

# Words that open an adverbial clause and can stand at either end of the sentence.
SUBORDINATORS = (
    "after",
    "although",
    "as soon as",
    "because",
    "before",
    "if",
    "once",
    "since",
    "though",
    "unless",
    "when",
    "whenever",
    "while",
)
# First words that may be lower-cased when the clause moves in front of them: a common noun
# or a name there ("Water expands when...") would need a tagger to tell apart.
_LOWERABLE = frozenset(
    ["a", "an", "the", "this", "that", "these", "those", "my", "your", "our", "his", "her"]
    + ["its", "their", "it", "we", "you", "he", "she", "they", "there", "please"]
)
_CONJ = "|".join(s.replace(" ", r"\s+") for s in SUBORDINATORS)
_FRONTED = re.compile(
    rf"^(?P<conj>{_CONJ})\s+(?!of\b)(?P<clause>[^,;:]+),\s*(?P<main>[^,;:]+?)(?P<end>[.!?]*)$",
    re.IGNORECASE,
)
_TRAILING = re.compile(
    rf"^(?P<main>[^,;:]+?),?\s+(?P<conj>{_CONJ})\s+(?!of\b)(?P<clause>[^,;:]+?)(?P<end>[.!?]*)$"
)
_NEGATION = re.compile(r"\b(\w+)n['’]t\b", re.IGNORECASE)
# "can't" splits as "ca" + "n't", "won't" as "wo" + "n't".
_IRREGULAR_NEGATION = {"ca": "cannot", "wo": "will not", "sha": "shall not"}
_PRONOUN_CONTRACTION = re.compile(
    r"\b(i|you|we|they|he|she|it|that|there|here|what|who|let)['’](m|re|ve|ll|s)\b", re.IGNORECASE
)
_CONTRACTED_VERB = {"m": "am", "re": "are", "ve": "have", "ll": "will", "s": "is"}


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def move_clause(sentence: str) -> str:
    """The sentence with its adverbial clause moved to the other end, or as it was when no
    rule applies safely."""
    fronted = _FRONTED.match(sentence)
    if fronted:
        main, conj = fronted["main"].strip(), fronted["conj"].lower()
        return f"{_capitalised(main)} {conj} {fronted['clause'].strip()}{fronted['end']}"
    trailing = _TRAILING.match(sentence)
    if trailing:
        main = trailing["main"].strip()
        first, _, rest = main.partition(" ")
        if not rest or (first != "I" and first.lower() not in _LOWERABLE):
            return sentence
        first = first if first == "I" else first.lower()
        conj = _capitalised(trailing["conj"])
        return f"{conj} {trailing['clause'].strip()}, {first} {rest}{trailing['end']}"
    return sentence


def expand_contractions(text: str) -> str:
    """Contractions spelt out. "'s" only after a pronoun, where it is "is" ("it's been" is
    "it has been"); after a noun it is a possessive and stays."""

    def negation(match: re.Match[str]) -> str:
        verb = match[1]
        full = _IRREGULAR_NEGATION.get(verb.lower())
        if full is None:
            return f"{verb} not"
        return _capitalised(full) if verb[0].isupper() else full

    def pronoun(match: re.Match[str]) -> str:
        word, suffix = match[1], match[2].lower()
        verb = "us" if word.lower() == "let" else _CONTRACTED_VERB[suffix]
        if suffix == "s" and match.string[match.end() :].lstrip().startswith(("been ", "got ")):
            verb = "has"
        return f"{word} {verb}"

    return _PRONOUN_CONTRACTION.sub(pronoun, _NEGATION.sub(negation, text))


def paraphrase(text: str) -> str:
    """Every sentence of ``text`` with its contractions spelt out and its clause moved."""
    return " ".join(move_clause(expand_contractions(s)) for s in sentences(text)) or text


class RuleParaphraser(System):
    """Rewrites the input with structure-only rules (see the module docstring)."""

    text_only = True

    name = "rule-paraphrase"
    description = "Rule-based paraphrase: clause moved to the other end, contractions spelt out"

    def params(self) -> dict:
        return {"version": 1, "subordinators": list(SUBORDINATORS)}

    def predict(
        self, cases: Sequence[Case], progress: Progress | None = None, *, suite: str | None = None
    ) -> list[Prediction]:
        return answer_each(cases, lambda case: paraphrase(case.input), progress)
