"""Systems under evaluation: anything that turns a case's input into an output.

The baselines and the prompt-template LLM systems of systems.yaml both live here, behind the
same interface, so both produce the same predictions asset; the LLM systems call models
through :mod:`flowstone.llm`.
"""
