"""``evaluation/comparison``: one partition per suite, every pair of its systems compared.

Thin wiring over :mod:`flowstone.evaluation.comparison`. The asset depends on every system's
``evaluation/scores`` of its suite (a multi-to-single-dimension mapping), reads the partitions
that are materialized and names the systems that are not, so a comparison of the systems that
ran is never blocked by one that did not, and never silently drops it either.
"""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from assets.evaluation import OWNERS, PREFIX
from flowstone.evaluation.catalog import Catalog
from flowstone.web.links import ViewerLinks, public_base_url

if TYPE_CHECKING:
    from flowstone.evaluation.comparison import SuiteComparisonResult

SCORES_KEY = dg.AssetKey([PREFIX, "scores"])
SCORES_IO_MANAGER_KEY = "io_manager"  # evaluation/scores is stored by the default I/O manager
COMPARISON_KEY = dg.AssetKey([PREFIX, "comparison"])
COMPARISON_JOB = "comparison_job"
# its own group: partitioned by suite, it cannot share a job with the suite x system assets
GROUP = "comparison"


def suite_partitions(catalog: Catalog) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(catalog.suite_names)


def comparison_metadata(result: "SuiteComparisonResult", missing: list[str]) -> dict:
    """Per metric, the leaders (systems nobody beats significantly) as text, and one markdown
    table of every pair: the difference b - a, its interval, the corrected p-value, the verdict."""
    return {
        "systems": ", ".join(result.systems),
        "not materialized": ", ".join(missing) or "none",
        "significant differences": len(result.significant()),
        **{f"leaders/{name}": ", ".join(m.leaders) for name, m in result.metrics.items()},
        "pairs": dg.MetadataValue.md(result.markdown()),
        "viewer": dg.MetadataValue.url(ViewerLinks(public_base_url()).suite(result.suite)),
    }


def load_scores(context: dg.AssetExecutionContext, keys: Sequence[str]) -> dict[str, Any]:
    """``evaluation/scores`` of the partitions ``keys``, in one call of its I/O manager.

    Why not ``context.load_asset_value`` per partition: each call builds a throwaway Dagster
    instance for its input and output contexts (about 0.3 s, most of a suite's comparison);
    this context reuses the step's resources and instance. An I/O manager the step does not
    hold (another key than ours) is read the slow way."""
    node = context.job_def.asset_layer.get(SCORES_KEY)
    manager = getattr(context.resources, node.io_manager_key, None)
    if not keys or not isinstance(manager, dg.IOManager) or node.partitions_def is None:
        return {k: context.load_asset_value(SCORES_KEY, partition_key=k) for k in keys}
    input_context = dg.InputContext(
        asset_key=SCORES_KEY,
        asset_partitions_def=node.partitions_def,
        asset_partitions_subset=node.partitions_def.subset_with_partition_keys(keys),
        resources=context.resources,
        instance=context.instance,
        log_manager=context.log,
    )
    loaded = manager.load_input(input_context)
    return {keys[0]: loaded} if len(keys) == 1 else {str(k): v for k, v in loaded.items()}


def build_comparison_asset(catalog: Catalog) -> dg.AssetsDefinition:
    partitions = suite_partitions(catalog)
    by_suite = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="suite")

    @dg.asset(
        key=COMPARISON_KEY,
        partitions_def=partitions,
        deps=[dg.AssetDep(SCORES_KEY, partition_mapping=by_suite)],
        group_name=GROUP,
        owners=OWNERS,
        kinds={"python", "scipy"},
        automation_condition=dg.AutomationCondition.eager(),
        # a backfill of several suites is one run, each suite's figures on its partition
        backfill_policy=dg.BackfillPolicy.single_run(),
        # the scores' I/O manager (the default one), read directly: see load_scores
        required_resource_keys={SCORES_IO_MANAGER_KEY},
        code_version="1",
        description="Every pair of systems on the suite: difference of means on the same "
        "cases, paired-bootstrap CI, p-value corrected for the number of comparisons, and "
        "better / worse / no significant difference.",
    )
    def comparison(context: dg.AssetExecutionContext) -> dg.Output[dict]:
        from flowstone.evaluation.comparison import (  # pandas/scipy: at run, not at load
            ComparisonSettings,
            compare_systems,
        )

        suites = list(context.partition_keys)
        done = context.instance.get_materialized_partitions(SCORES_KEY)
        present: dict[str, list[str]] = {}
        missing: dict[str, list[str]] = {}
        keys: dict[tuple[str, str], str] = {}  # (suite, system) -> its scores partition
        for suite in suites:
            for system in catalog.systems.names:
                key = dg.MultiPartitionKey({"suite": suite, "system": system})
                (present if key in done else missing).setdefault(suite, []).append(system)
                keys[suite, system] = str(key)
        wanted = [keys[s, y] for s in suites for y in present.get(s, [])]
        lacking = [s for s in suites if len(present.get(s, [])) < 2]
        if lacking:  # before any score is read: nothing to compare on these suites
            suite = lacking[0]
            have, not_yet = present.get(suite, []), missing.get(suite, [])
            raise dg.Failure(
                f"evaluation/comparison {suite}: {len(have)} system(s) have scores on {suite} "
                f"({', '.join(have) or 'none'}); materialize evaluation/scores for at least "
                f"two (not yet: {', '.join(not_yet)})"
            )
        scores = load_scores(context, wanted)
        values, metadata = {}, {}
        for suite in suites:
            frames = {system: scores[keys[suite, system]] for system in present[suite]}
            settings = catalog.settings.for_suite(suite)
            stats = settings.statistics
            result = compare_systems(
                suite,
                frames,
                list(settings.metrics),
                ComparisonSettings(stats.confidence_level, stats.resamples, stats.seed),
            )
            not_materialized = missing.get(suite, [])
            values[suite] = {**result.to_dict(), "not_materialized": not_materialized}
            metadata[suite] = comparison_metadata(result, not_materialized)
        if len(suites) == 1:
            return dg.Output(values[suites[0]], metadata=metadata[suites[0]])
        for suite in suites:
            context.add_asset_metadata(metadata[suite], partition_key=suite)
        return dg.Output(values)

    return comparison


comparison_job = dg.define_asset_job(
    COMPARISON_JOB,
    selection=dg.AssetSelection.assets(COMPARISON_KEY),
    description="Pairwise comparison of the systems on each suite.",
)
