"""``evaluation/comparison``: one partition per suite, every pair of its systems compared.

Thin wiring over :mod:`flowstone.evaluation.comparison`. The asset depends on every system's
``evaluation/scores`` of its suite (a multi-to-single-dimension mapping), reads the partitions
that are materialized and names the systems that are not, so a comparison of the systems that
ran is never blocked by one that did not, and never silently drops it either.
"""

from typing import TYPE_CHECKING

import dagster as dg

from assets.evaluation import OWNERS, PREFIX
from flowstone.evaluation.catalog import Catalog
from flowstone.web.links import ViewerLinks, public_base_url

if TYPE_CHECKING:
    from flowstone.evaluation.comparison import SuiteComparisonResult

SCORES_KEY = dg.AssetKey([PREFIX, "scores"])
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

        suite = context.partition_key
        done = context.instance.get_materialized_partitions(SCORES_KEY)
        frames, missing = {}, []
        for system in catalog.systems.names:
            key = dg.MultiPartitionKey({"suite": suite, "system": system})
            if key in done:
                frames[system] = context.load_asset_value(SCORES_KEY, partition_key=key)
            else:
                missing.append(system)
        if len(frames) < 2:
            raise dg.Failure(
                f"evaluation/comparison {suite}: {len(frames)} system(s) have scores on {suite} "
                f"({', '.join(frames) or 'none'}); materialize evaluation/scores for at least "
                f"two (not yet: {', '.join(missing)})"
            )
        settings = catalog.settings.for_suite(suite)
        stats = settings.statistics
        result = compare_systems(
            suite,
            frames,
            list(settings.metrics),
            ComparisonSettings(stats.confidence_level, stats.resamples, stats.seed),
        )
        return dg.Output(
            {**result.to_dict(), "not_materialized": missing},
            metadata=comparison_metadata(result, missing),
        )

    return comparison


comparison_job = dg.define_asset_job(
    COMPARISON_JOB,
    selection=dg.AssetSelection.assets(COMPARISON_KEY),
    description="Pairwise comparison of the systems on each suite.",
)
