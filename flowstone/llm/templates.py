"""Prompt templates kept as Jinja files, rendered strictly.

Both the prompt-template systems (:mod:`flowstone.systems.prompt_template`) and the LLM
judges' rubrics (:mod:`flowstone.evaluation.judges`) render prompts with it, so it sits in the
llm leaf that both already use rather than in either of them. What values a template sees is
its caller's business. An undefined variable is an error naming the template, not an empty
string in a prompt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flowstone.paths import _from_env, project_root


def prompts_dir() -> Path:
    """The folder of prompt templates (``FLOWSTONE_PROMPTS_DIR`` or ``<repo>/prompts``)."""
    return _from_env("FLOWSTONE_PROMPTS_DIR", project_root() / "prompts")


class PromptTemplate:
    def __init__(self, path: str | Path):
        import jinja2

        self.path = Path(path)
        try:
            self.text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FileNotFoundError(
                f"prompt template {self.path}: cannot read it ({exc.strerror})"
            ) from None
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
        )
        try:
            self._template = env.from_string(self.text)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(
                f"prompt template {self.path}, line {exc.lineno}: {exc.message}"
            ) from None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, **values: object) -> str:
        import jinja2

        try:
            return self._template.render(**values).strip()
        except jinja2.UndefinedError as exc:
            raise ValueError(f"prompt template {self.path}: {exc.message}") from None
