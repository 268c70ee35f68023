"""The bake as steps the assets call: prepare the source, then run the passes with
checkpoints.

Checkpoints: each pass writes into ``<workspace>/<model>/<version>/passes/NN-<pass>/`` and
records what it did in ``record.json`` together with a chain hash (the source hash and every
pass spec up to it). A rerun reuses every checkpoint whose chain hash still matches, so a bake
that failed at pass 3 resumes there once the cause is fixed, and changing pass 2's options
redoes passes 2 and later only. A pass's folder appears under its final name only when the
pass and its forward-pass check succeeded (rename), so a crash never leaves a checkpoint
that looks good.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowstone.atomic import write_text
from flowstone.baking import sources
from flowstone.baking.artifacts import Artifact, open_runner
from flowstone.baking.config import BakeConfig, PassSpec
from flowstone.baking.errors import BakeError
from flowstone.baking.passes import PASSES
from flowstone.baking.recipe_gate import ExtraGate
from flowstone.baking.records.bake import BakeRecord, PassStep, RecipeRecord
from flowstone.baking.records.source import SourceRecord
from flowstone.faults import failpoint


def _check_output(
    name: str, stage: str, what: str, output: Any, expected_shape: tuple | None
) -> tuple:
    import numpy as np

    array = np.asarray(output)
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise BakeError(name, stage, f"{what} produced non-finite or non-numeric output")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise BakeError(
            name, stage, f"{what} produced output of shape {tuple(array.shape)}, expected "
            f"{tuple(expected_shape)} like the original"
        )  # fmt: skip
    return tuple(array.shape)


def _copy_original(
    source: sources.SourceModel, model: Any, config: BakeConfig, workdir: Path
) -> Artifact:
    """Keep an immutable copy of the original in the workspace: the drop folder may change
    while later steps (quality, profile) still compare against this version."""
    target = workdir / "original"
    staging = workdir / ".original.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if source.kind == "sentence_transformers":
        shutil.copytree(source.path, staging / "model", ignore=shutil.ignore_patterns("bake.yaml"))
        path, fmt = target / "model", "sentence_transformers"
    elif source.kind == "torchscript":
        shutil.copy2(source.path, staging / "model.ts")
        path, fmt = target / "model.ts", "torchscript"
    else:
        import torch

        torch.save(model, str(staging / "model.pt"))
        path, fmt = target / "model.pt", "torch_module"
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    tokenizer = path if fmt == "sentence_transformers" else None
    return Artifact(fmt, path, config.task, tokenizer)


def prepare_source(name: str, model_path: Path, workspace: Path) -> SourceRecord:
    """Validate the dropped model (size, format, import, forward pass) and record it."""
    config = sources.config_for(model_path, name)
    source = sources.inspect_model(model_path, name, max_size_mb=config.max_size_mb)
    started = time.perf_counter()
    model = sources.load_model(source, config)
    load_seconds = time.perf_counter() - started
    sample = sources.sample_input(model, config, name)
    started = time.perf_counter()
    try:
        if config.task == "embedding":
            output = model.encode(sample, convert_to_numpy=True, show_progress_bar=False)
        else:
            import torch

            with torch.inference_mode():
                output = model(sample).detach().numpy()
    except Exception as exc:
        raise BakeError(
            name, "source_model", f"forward pass on a sample input failed: {exc}"
        ) from exc
    forward_ms = (time.perf_counter() - started) * 1000
    shape = _check_output(name, "source_model", "the original model", output, None)
    version = source.version({k: v for k, v in config.as_dict().items() if k != "source"})
    workdir = workspace / name / version
    original = _copy_original(source, model, config, workdir)
    return SourceRecord(
        model=name,
        version=version,
        kind=source.kind,
        task=config.task,
        sha256=source.sha256,
        size_bytes=source.size_bytes,
        parameters=sources.parameter_count(model),
        load_seconds=round(load_seconds, 3),
        forward_ms=round(forward_ms, 2),
        output_shape=list(shape),
        input_shape=list(sources.input_shape(model, config, name))
        if config.task == "classifier"
        else None,
        source_path=str(model_path),
        workdir=workdir,
        config=config.as_dict(),
        original=original,
    )


def _sample(record: SourceRecord, config: BakeConfig) -> Any:
    if config.task == "embedding":
        return sources.SAMPLE_SENTENCES
    import torch

    assert record.input_shape is not None  # the source step records it for classifiers
    generator = torch.Generator().manual_seed(0)
    return torch.randn((2, *record.input_shape), generator=generator)


def _resume(folder: Path, chain: str, log: Callable[[str], None] | None,
            what: str) -> tuple[Artifact, PassStep] | None:  # fmt: skip
    """The checkpoint in ``folder`` when it belongs to this chain and its files still hash to
    what the pass recorded; None (the pass runs again) when it is absent, of another chain,
    unreadable or damaged on disk. A damaged checkpoint is never resumed: its artifact would
    go into the package as if it were the pass's output."""
    saved = folder / "record.json"
    if not saved.exists():
        return None
    try:
        previous = json.loads(saved.read_text())
        if previous.get("chain") != chain:
            return None
        artifact = Artifact.from_dict(previous["artifact"])
        step = PassStep.from_dict(previous["step"])
        recorded = step.sha256
        actual = Artifact.sha256(artifact) if recorded else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if log:
            log(f"{what}: checkpoint {folder} unreadable ({exc}); running the pass again")
        return None
    if recorded and actual != recorded:
        if log:
            log(f"{what}: checkpoint {folder} damaged (sha256 {str(actual)[:12]}… recorded "
                f"{recorded[:12]}…); running the pass again")  # fmt: skip
        return None
    if log:
        log(f"{what}: resumed from checkpoint {folder}")
    return artifact, step.resumed_copy()


def run_pass_chain(
    record: SourceRecord,
    specs: Sequence[PassSpec],
    *,
    log: Callable[[str], None] | None = None,
) -> tuple[Artifact, list[PassStep]]:
    """Run ``specs`` in order from the record's original, resuming from matching checkpoints:
    the final artifact and every step. ``run_passes`` runs a bake's passes through here, and
    the recipe search (``recipe: auto``) its candidates' shared first step, so the bake
    resumes that step's checkpoint instead of redoing it."""
    name = record.model
    artifact = record.original
    sample = _sample(record, record.bake_config())
    chain = record.sha256
    steps: list[PassStep] = []
    for index, spec in enumerate(specs):
        chain = hashlib.sha256(
            (chain + json.dumps(spec.as_dict(), sort_keys=True)).encode()
        ).hexdigest()
        folder = record.workdir / "passes" / f"{index:02d}-{spec.name}"
        resumed = _resume(folder, chain, log, f"pass {index + 1} '{spec.name}'")
        if resumed is not None:
            artifact, step = resumed
            steps.append(step)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        staging = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        started = time.perf_counter()
        try:
            produced = PASSES[spec.name](artifact, dict(spec.options), staging, sample)
            # Paths inside the staging folder move with the rename below.
            final = Artifact(
                produced.format, folder / produced.path.relative_to(staging), produced.task,
                produced.tokenizer_dir, produced.extra,
            )  # fmt: skip
            runner = open_runner(produced)
            output = runner.run(sample)
            previous = f"{index - 1:02d}-{specs[index - 1].name}" if index else None
            failpoint("pass", model=name, index=index, name=spec.name,
                      checkpoint=str(folder.parent / previous) if previous else None)  # fmt: skip
        except BakeError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            done = ", ".join(s.name for s in steps) or "none"
            raise BakeError(
                name, "baked_model", f"pass {index + 1} '{spec.name}' failed: {exc}. Passes done "
                f"and checkpointed: {done}; fix the model or its bake config and materialize "
                "again to resume after them"
            ) from exc  # fmt: skip
        try:
            # The same sample as the source step: the same output shape is expected.
            _check_output(name, "baked_model", f"pass {index + 1} '{spec.name}'", output,
                          tuple(record.output_shape))  # fmt: skip
        except BakeError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        seconds, size_bytes = round(time.perf_counter() - started, 3), produced.size_bytes()
        staging.rename(folder)
        step = PassStep(
            name=spec.name, options=spec.options, format=final.format, seconds=seconds,
            size_bytes=size_bytes, extra=produced.extra, resumed=False, sha256=Artifact.sha256(final),
        )  # fmt: skip
        checkpoint = {"chain": chain, "artifact": final.as_dict(), "step": step.to_dict()}
        write_text(folder / "record.json", json.dumps(checkpoint, indent=2, default=str))
        steps.append(step)
        artifact = final
        if log:
            log(f"pass {index + 1} '{spec.name}': {step.seconds} s, {step.size_bytes} bytes")
    return artifact, steps


def run_passes(record: SourceRecord, *, log: Callable[[str], None] | None = None,
               extra_gate: ExtraGate | None = None) -> BakeRecord:  # fmt: skip
    """Run the configured passes in order, resuming from matching checkpoints. With
    ``recipe: auto`` the passes are the recipe the search chose on this host
    (``flowstone.baking.recipe_search``); each checkpoint's chain hash covers the chosen
    steps, so another choice redoes the passes from the first that differs. ``extra_gate``:
    a further gate every candidate must pass (the task suites, which the evaluation owns)."""
    name = record.model
    config = record.bake_config()
    specs: Sequence[PassSpec] = config.passes
    recipe = None
    if config.recipe == "auto":
        from flowstone.baking.recipe_search import choose_recipe, pass_specs

        recipe = choose_recipe(
            record, config, log=log,
            build_base=lambda base: run_pass_chain(record, base, log=log)[0],
            extra_gate=extra_gate,
        )  # fmt: skip
        specs = pass_specs(recipe.steps)
    artifact, steps = run_pass_chain(record, specs, log=log)
    if not steps:
        raise BakeError(name, "baked_model", "the bake config lists no passes")
    return BakeRecord(
        model=name,
        version=record.version,
        task=config.task,
        artifact=artifact,
        sha256=Artifact.sha256(artifact),
        size_bytes=artifact.size_bytes(),
        passes=steps,
        recipe=recipe,
    )


def host_recipe(
    workspace: Path | None = None, log: Callable[[str], None] | None = None
) -> RecipeRecord:
    """What ``recipe: auto`` chooses for the packaged all-MiniLM-L6-v2 on this host with the
    default bake config (fidelity gate on the shipped held-out pairs, default search budget):
    the search's cached choice, or a search now. For the benchmark, which must compare the
    recipe a user of this host gets, not the shipped one. ``workspace`` (default
    ``<bake workspace>/.host_recipe``) holds the source copy and the search cache."""
    from flowstone import paths
    from flowstone.baking.recipe_search import choose_recipe
    from flowstone.encoder import model_path

    workspace = workspace or paths.bake_workspace() / ".host_recipe"
    record = prepare_source("minilm", model_path(), workspace)
    return choose_recipe(record, record.bake_config(), workspace=workspace, log=log)
