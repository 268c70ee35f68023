"""Model baking: load and validate a model, run optimisation passes, measure quality and
speed against the original, package the result with a manifest, deploy it after approval.

Plain Python: the Dagster assets in ``assets/baking.py`` call into these modules.
"""
