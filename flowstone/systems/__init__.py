"""Systems under evaluation: anything that turns a case's input into an output.

Baselines live here; the LLM package registers prompt-template systems through the same
interface, so both produce the same predictions asset.
"""
