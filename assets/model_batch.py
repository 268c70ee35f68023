"""The models one bake run covers: one (the drop sensor's run, a click in the UI) or many (a
backfill, which on one host is a single run).

A run of its own costs a model a run worker, the code location and torch's import before it
bakes anything, which for small models is more than the bake (bench/bench_baking_concurrent.py
has the figures), so the bake assets take ``BackfillPolicy.single_run()`` on one host, the
way a seasoned Dagster user batches cheap partitions. Each bake asset's body still bakes one
model: :class:`ModelBatch` calls it for every model of the run and hands Dagster what it
expects, the body's own ``Output`` for one model, or the values keyed by model with each
model's metadata (and check result) on its own partition for many.

One step per asset serves the whole batch, so the batch shares its fate: a model that fails
does not stop its siblings' work in that step (passes are checkpointed, so the work is kept),
but the step then fails naming every failed model, and nothing of the run goes past it. A
failed blocking check does the same one step later. Models dropped one by one keep a run
each (the drop sensor's ``RunRequest`` per model version).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import dagster as dg

from assets.partition_checks import latest_target

T = TypeVar("T")


class ModelBatch:
    """The ``models`` partitions of one step: ``keys`` in the run's order.

    ``retry_only``: for a step with a retry policy, the failures worth retrying; any other
    fails the step at once (``dg.Failure(allow_retries=False)``, the cause kept). None: the
    policy, if any, retries every failure."""

    def __init__(self, context: dg.AssetExecutionContext,
                 retry_only: Callable[[BaseException], bool] | None = None):  # fmt: skip
        self.context = context
        self.keys = list(context.partition_keys)
        self.retry_only = retry_only

    @property
    def single(self) -> bool:
        return len(self.keys) == 1

    def each(self, one: Callable[..., T], **inputs: Any) -> dict[str, T]:
        """``one(model, **that model's inputs)`` for every model, by model. Inputs arrive as
        Dagster loads them: the value for one partition, a dict by partition for many. With
        many models, one that raises is logged and the others still run; then one
        ``dg.Failure`` names every failure."""
        if self.single:
            key = self.keys[0]
            try:
                return {key: one(key, **inputs)}
            except Exception as exc:
                if self.retry_only is None or self.retry_only(exc):
                    raise
                raise dg.Failure(
                    description=f"{self._asset()} [{key}]: {type(exc).__name__}: {exc}",
                    allow_retries=False,
                ) from exc
        done: dict[str, T] = {}
        failed: dict[str, Exception] = {}
        for key in self.keys:
            try:
                done[key] = one(key, **{name: value[key] for name, value in inputs.items()})
            except Exception as exc:  # every model of the batch gets its turn; reported below
                self.context.log.error(f"{self._asset()} [{key}] failed: {exc}")
                failed[key] = exc
        if failed:
            raise self._failure(done, failed) from next(iter(failed.values()))
        return done

    def output(self, outputs: Mapping[str, Any], output_name: str = "result") -> dg.Output:
        """One model: its ``Output`` as the body built it (metadata, data version). Many: the
        values by model, each model's metadata on its own partition. Dagster gives the
        outputs of one step a single data version, so a batch's is Dagster's own (code and
        input versions); the content hashes stay in each model's metadata."""
        if self.single:
            only = outputs[self.keys[0]]
            if not isinstance(only, dg.Output):
                return dg.Output(only, output_name=output_name)
            if only.output_name == output_name:
                return only
            return dg.Output(only.value, output_name, metadata=only.metadata,
                             data_version=only.data_version)  # fmt: skip
        values = {}
        for key in self.keys:
            out = outputs[key]
            if isinstance(out, dg.Output):
                self.context.add_asset_metadata(dict(out.metadata), partition_key=key)
                out = out.value
            values[key] = out
        return dg.Output(values, output_name=output_name)

    def run(self, one: Callable[..., Any], **inputs: Any) -> dg.Output:
        """``output(each(one, **inputs))``: what a one-output bake asset returns."""
        return self.output(self.each(one, **inputs))

    def check(self, result: dg.AssetCheckResult, key: str, asset_key: dg.AssetKey,
              blocking: bool) -> dg.AssetCheckResult | dg.AssetCheckEvaluation:  # fmt: skip
        """``result`` for model ``key``: as is for one model (Dagster ties it to the run's
        partition and materialization), else an evaluation naming the partition and its
        materialization, so each model has its own result and only a failing model fails."""
        if self.single:
            return result
        return dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=result.check_name or "",
            passed=result.passed,
            metadata=result.metadata,
            severity=result.severity,
            blocking=blocking,
            description=result.description,
            partition=key,
            target_materialization_data=latest_target(self.context.instance, asset_key, key),
        )

    def _asset(self) -> str:
        return " + ".join(k.to_user_string() for k in self.context.selected_asset_keys)

    def _failure(self, done: Mapping[str, Any], failed: Mapping[str, Exception]) -> dg.Failure:
        lines = "\n".join(f"- {key}: {exc}" for key, exc in failed.items())
        retry = self.retry_only is None or any(self.retry_only(e) for e in failed.values())
        return dg.Failure(
            allow_retries=retry,
            description=f"{self._asset()}: {len(failed)} of {len(self.keys)} models of this "
            f"run failed:\n{lines}\nThe other {len(done)} were done in this step, but a "
            "single-run backfill has one step per asset, so nothing of this run goes past it. "
            "Fix or leave out the failing models and backfill again (finished pass "
            "checkpoints are reused), or materialize the others one by one.",
            metadata={"failed_models": sorted(failed), "done_models": sorted(done)},
        )
