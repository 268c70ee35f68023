"""The model reference sensor: when what a ``baked:NAME`` or ``deployed:NAME`` reference points
to changes (a bake passed its gates, an approval deployed a version, a rollback), it records a
new observation of the evaluation sources that use it, so exactly those partitions turn stale
in the UI without anyone pressing "Observe sources".

Why a sensor and not a dependency edge: an evaluation partition (suite x system) cannot map to
a model partition with Dagster's partition mappings, and most evaluation partitions use no baked
model at all. The data versions it records are the same fingerprints the observable sources
``evaluation/scoring_config`` and ``evaluation/system_spec`` compute, so an observation from the
UI agrees with the sensor's. A tick reads a few small JSON files and emits nothing when nothing
changed; running by default, since without it a new bake leaves evaluations looking current.
"""

from __future__ import annotations

import json

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from flowstone.evaluation.catalog import Catalog

SCORING_CONFIG_KEY = dg.AssetKey(["evaluation", "scoring_config"])
SYSTEM_SPEC_KEY = dg.AssetKey(["evaluation", "system_spec"])


def current_versions(catalog: Catalog) -> dict[str, dict[str, str]]:
    """asset -> partition -> data version, for the partitions that use a model reference."""
    suites = {
        name: catalog.settings.for_suite(name).fingerprint()
        for name in catalog.suite_names
        if catalog.settings.for_suite(name).model_versions()
    }
    systems = {
        system.name: system.fingerprint()
        for system in catalog.systems
        if getattr(system, "model", "default") != "default"
    }
    return {
        SCORING_CONFIG_KEY.to_user_string(): suites,
        SYSTEM_SPEC_KEY.to_user_string(): systems,
    }


def changed_observations(
    previous: dict[str, dict[str, str]], now: dict[str, dict[str, str]]
) -> list[dg.AssetObservation]:
    """An observation for each partition whose data version differs from the last tick's."""
    events = []
    for asset, versions in now.items():
        for partition, version in sorted(versions.items()):
            if previous.get(asset, {}).get(partition) != version:
                events.append(
                    dg.AssetObservation(
                        asset_key=dg.AssetKey.from_user_string(asset),
                        partition=partition,
                        tags={DATA_VERSION_TAG: version},
                        metadata={"observed_by": "model_refs_sensor"},
                    )
                )
    return events


def build_model_refs_sensor(catalog: Catalog) -> dg.SensorDefinition:
    @dg.sensor(
        name="model_refs_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Records a new data version for the evaluation partitions whose metric or "
        "system uses baked:NAME / deployed:NAME when that reference points to a new version, "
        "so they show as stale.",
    )
    def model_refs_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        previous = json.loads(context.cursor) if context.cursor else {}
        now = current_versions(catalog)
        events = changed_observations(previous, now)
        return dg.SensorResult(asset_events=events, cursor=json.dumps(now, sort_keys=True))

    return model_refs_sensor
