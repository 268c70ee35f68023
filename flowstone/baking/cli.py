"""``flowstone models ...``: drop a model for baking, list models, show and roll back
deployments. ``flowstone models bake`` (mounted from flowstone/cli.py) runs bakes in this
process for people without a running sensor daemon.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flowstone.baking.deploy import Deployments
from flowstone.baking.errors import BakeError
from flowstone.baking.intake import add_model, scan_local
from flowstone.errors import FlowStoneError
from flowstone.paths import deployments_dir, models_dir

app = typer.Typer(help="Models to bake: add, list, deployments, rollback.", no_args_is_help=True)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


@app.command("add")
def add(
    path: Annotated[
        Path,
        typer.Argument(
            help="A model file (.pt/.pth/.safetensors/.ts) or a sentence-transformers folder."
        ),
    ],
    name: str = typer.Option(..., "--name", help="The model's partition name."),
    config: Annotated[
        Path | None, typer.Option(help="A bake.yaml to drop beside the model.")
    ] = None,
    replace: bool = typer.Option(False, help="Drop a new version of an existing model."),
) -> None:
    """Copy a model into the watched drop folder; the drop sensor adds its partition and
    requests the bake (or run `flowstone models bake NAME`)."""
    try:
        target = add_model(path, name, models_dir(), config=config, replace=replace)
    except FlowStoneError as exc:
        _fail(exc)
    typer.echo(f"dropped {name} at {target}")


@app.command("example")
def example(
    which: Annotated[str, typer.Argument(help="intent: the intent classifier over MiniLM.")],
    replace: bool = typer.Option(False, help="Drop a new version if it is there already."),
) -> None:
    """Train a shipped example model here (no download) and drop it for baking. ``intent``:
    a classifier head over the packaged MiniLM for the intent suite; once a bake of it passes,
    systems.yaml's ``classifiers:`` entry makes it a system."""
    from flowstone.baking import demo_models
    from flowstone.paths import outputs_dir

    if which != "intent":
        _fail(ValueError(f"unknown example {which!r}; the examples: intent"))
    name = "intent_classifier"
    try:
        path = demo_models.write_intent_classifier(outputs_dir() / "example_models", name)
        target = add_model(path, name, models_dir(), replace=replace)
    except FlowStoneError as exc:
        _fail(exc)
    typer.echo(f"dropped {name} at {target}; bake it: flowstone models bake {name}")


@app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json")) -> None:
    """Models in the drop folder and their deployed version."""
    deployments = Deployments(deployments_dir())
    rows = [{"model": d.name, "location": d.location, "deployed": deployments.current(d.name)}
            for d in scan_local(models_dir())]  # fmt: skip
    for name in deployments.models():
        if name not in {r["model"] for r in rows}:
            rows.append({"model": name, "location": None, "deployed": deployments.current(name)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no models in {models_dir()}")
    for row in rows:
        typer.echo(
            f"{row['model']:<24} deployed={row['deployed'] or '-':<14} {row['location'] or ''}"
        )


@app.command("deployments")
def deployments_of(name: str) -> None:
    """The deployment history of one model (newest last)."""
    state = Deployments(deployments_dir()).state(name)
    typer.echo(f"{name}: current version {state['current'] or '(none)'}")
    for event in state["history"]:
        by = f" approved by {event['approved_by']}" if event.get("approved_by") else ""
        typer.echo(
            f"  {event['at']}  {event['action']:<8} {event['version']}  (was {event['previous'] or '-'}){by}"
        )


@app.command("rollback")
def rollback(name: str) -> None:
    """Make the previously deployed version of NAME current again."""
    try:
        event = Deployments(deployments_dir()).rollback(name)
    except BakeError as exc:
        _fail(exc)
    typer.echo(f"{name}: rolled back from {event['previous']} to {event['version']}")
