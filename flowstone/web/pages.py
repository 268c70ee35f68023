"""The viewer's pages: overview, suite comparison, cases, one case, a partition, its diff,
and a model's bakes.

Each endpoint reads what the assets stored (object store and warehouse) for this request only
and renders one template; nothing is cached between requests, so a page shows the latest
materialization the moment it lands. Endpoints are plain functions: Starlette runs them in
its thread pool, where the blocking reads (files, S3, DuckDB) belong.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from flowstone.storage.versions import StoredVersion
from flowstone.web.approvals import old_list_link
from flowstone.web.case_diff import SORTS as DIFF_SORTS
from flowstone.web.case_diff import CaseChange, CaseDiffFilter, counts, diff_cases
from flowstone.web.charts import Series, colour, line_chart
from flowstone.web.compare import (
    SORTS,
    CaseFilter,
    CaseTable,
    SuiteComparison,
    case_table,
    metric_changes,
)
from flowstone.web.errors import BadRequest, NotFound
from flowstone.web.links import ViewerLinks
from flowstone.web.models import ModelView, load_model_view
from flowstone.web.render import links_for, page
from flowstone.web.sources import Readers, ViewerSources
from flowstone.web.stored import PartitionKey

TRUE = ("1", "on", "true")
DIFF_SHOWS = {
    "changed": "changed cases",
    "newly_failing": "newly failing",
    "all": "every case",
}


@dataclass(frozen=True)
class CaseDiffView:
    """The per-case diff on show: the kept versions, the two compared, the filtered rows."""

    versions: list[StoredVersion]
    previous: StoredVersion | None
    current: StoredVersion | None
    changes: list[CaseChange]
    spec: CaseDiffFilter

    @property
    def rows(self) -> list[CaseChange]:
        return self.spec.apply(self.changes)

    @property
    def counts(self) -> dict[str, int]:
        return counts(self.changes)


def _version(
    versions: list[StoredVersion],
    run: str | None,
    key: PartitionKey,
    before: StoredVersion | None = None,
) -> StoredVersion | None:
    """The kept version written by the run whose id starts with ``run`` (a 404 naming the
    kept runs when none is); without ``run``, the newest one, or the one just before
    ``before``. None when there is no such version."""
    if run:
        found = [v for v in versions if v.run_id.startswith(run)]
        if len(found) != 1:
            kept = ", ".join(v.run_id[:8] for v in versions) or "none"
            what = "no" if not found else "more than one"
            raise NotFound(
                f"{what} kept materialization of {key.suite}|{key.system} by run {run!r}; "
                f"kept runs: {kept}"
            )
        return found[0]
    if before is None:
        return versions[-1] if versions else None
    at = versions.index(before)
    return versions[at - 1] if at > 0 else None


@dataclass(frozen=True)
class SuiteOverview:
    """One row of the overview's suite table."""

    suite: str
    comparison: SuiteComparison

    @property
    def regressions(self) -> int:
        return sum(len(r.regressions) for r in self.comparison.reports.values())


def _known(names: list[str]) -> str:
    return ", ".join(names) if names else "none yet"


def _metric_param(params: Mapping[str, str], comparison: SuiteComparison) -> str:
    """The ``metric`` query parameter (default: the suite's first), or a 400 naming those there
    are: a filter on a metric that does not exist must never look like an empty result."""
    metrics = comparison.metrics
    metric = params.get("metric") or (metrics[0] if metrics else "")
    if metric not in metrics:
        raise BadRequest(
            f"no metric {metric!r} on suite {comparison.suite!r}; metrics: {_known(metrics)}"
        )
    return metric


def _choice(params: Mapping[str, str], name: str, options: Mapping[str, str], default: str) -> str:
    """A query parameter that must be one of ``options``' keys, or a 400 naming them."""
    value = params.get(name) or default
    if value not in options:
        raise BadRequest(f"unknown {name} {value!r}; {name}s: {_known(list(options))}")
    return value


class Listing:
    """The evaluated partitions, listed once per request: suite -> its systems."""

    def __init__(self, readers: Readers):
        self.readers = readers
        by_suite: dict[str, list[str]] = defaultdict(list)
        for key in readers.stored().partitions():
            by_suite[key.suite].append(key.system)
        self.suites = dict(sorted(by_suite.items()))

    def systems_of(self, suite: str) -> list[str]:
        """The suite's evaluated systems, or a 404 naming the suite and those that exist."""
        if suite in self.suites:
            return self.suites[suite]
        defined = self.readers.sources.defined_suites()
        if suite in defined:
            raise NotFound(
                f"suite {suite!r} has nothing materialized yet; materialize its "
                "evaluation/report partitions (make demo, or the Dagster UI)",
                nav=list(self.suites),
            )
        known = sorted(set(self.suites) | set(defined))
        raise NotFound(f"no suite {suite!r}; known suites: {_known(known)}", nav=list(self.suites))

    def comparison(self, suite: str) -> SuiteComparison:
        stored = self.readers.stored()
        reports = {}
        for system in self.systems_of(suite):
            report = stored.report(PartitionKey(suite, system))
            if report is not None:
                reports[system] = report
        return SuiteComparison(suite, reports)

    def require_system(self, comparison: SuiteComparison, system: str) -> None:
        if system not in comparison.reports:
            raise NotFound(
                f"no system {system!r} evaluated on suite {comparison.suite!r}; known systems: "
                f"{_known(comparison.systems)}",
                nav=list(self.suites),
            )

    def case_table(self, comparison: SuiteComparison) -> CaseTable:
        stored = self.readers.stored()
        cases, answers = {}, {}
        for system in comparison.systems:
            key = PartitionKey(comparison.suite, system)
            stored_cases = stored.cases(key)
            stored_answers = stored.answers(key, comparison.metrics)
            if stored_cases is not None:
                cases[system] = stored_cases
            if stored_answers is not None:
                answers[system] = stored_answers
        return case_table(comparison.suite, cases, answers, comparison)


class Viewer:
    """The viewer's endpoints over one set of sources."""

    def __init__(self, sources: ViewerSources):
        self.readers = Readers(sources)

    def _render(
        self, request: Request, template: str, listing: Listing, crumbs: list, **context: Any
    ) -> Response:
        return page(
            request,
            template,
            nav_suites=list(listing.suites),
            sources=self.readers.sources.describe(),
            crumbs=[("Overview", links_for(request).index()), *crumbs] if crumbs else None,
            **context,
        )

    # -- pages --------------------------------------------------------------------------

    def index(self, request: Request) -> Response:
        redirect = old_list_link(request)
        if redirect is not None:
            return redirect
        listing = Listing(self.readers)
        suites = [SuiteOverview(s, listing.comparison(s)) for s in listing.suites]
        models = [
            load_model_view(self.readers, m, with_history=False)
            for m in self.readers.stored().models()
        ]
        if not suites and not models:
            defined = self.readers.sources.defined_suites()
            return self._render(request, "empty.html", listing, [], defined=defined)
        systems = sorted({s for o in suites for s in o.comparison.systems})
        return self._render(
            request, "index.html", listing, [], suites=suites, systems=systems, models=models
        )

    def suite(self, request: Request) -> Response:
        name = request.path_params["suite"]
        listing = Listing(self.readers)
        comparison = listing.comparison(name)
        trend = self.readers.warehouse().trend(name)
        charts = []
        for metric in comparison.metrics:
            series = [
                Series(s, [(p.materialized_at, p.mean) for p in trend.get((s, metric), [])])
                for s in comparison.systems
            ]
            if any(s.points for s in series):
                title = f"{metric}: mean per materialization"
                charts.append((metric, line_chart(series, title=title)))
        return self._render(
            request,
            "suite.html",
            listing,
            [(name, None)],
            comparison=comparison,
            table=listing.case_table(comparison),
            charts=charts,
            pairs=self.readers.stored().comparison(name),
            colours={s: colour(i) for i, s in enumerate(comparison.systems)},
            warehouse_exists=self.readers.sources.warehouse.is_file(),
        )

    def cases(self, request: Request) -> Response:
        name = request.path_params["suite"]
        listing = Listing(self.readers)
        comparison = listing.comparison(name)
        table = listing.case_table(comparison)
        spec = self._filter(request, listing, comparison, table)
        return self._render(
            request,
            "cases.html",
            listing,
            [(name, links_for(request).suite(name)), ("cases", None)],
            comparison=comparison,
            table=table,
            spec=spec,
            rows=table.filtered(spec),
            sorts=SORTS,
        )

    def _filter(
        self, request: Request, listing: Listing, comparison: SuiteComparison, table: CaseTable
    ) -> CaseFilter:
        """The case list's query parameters; a value that does not exist is a 400 (404 for a
        system) naming what does, never an empty list that looks like a result."""
        params = request.query_params
        metric = _metric_param(params, comparison)
        tag = params.get("tag", "")
        if tag and tag not in table.tags:
            raise BadRequest(
                f"no tag {tag!r} in suite {comparison.suite!r}; tags: {_known(table.tags)}"
            )
        system = params.get("system", "")
        if system:
            listing.require_system(comparison, system)
        sort = _choice(params, "sort", SORTS, "id")
        return CaseFilter(
            metric=metric,
            tag=tag,
            failing=params.get("failing") in TRUE,
            disagree=params.get("disagree") in TRUE,
            system=system,
            sort=sort,
        )

    def case(self, request: Request) -> Response:
        name, case_id = request.path_params["suite"], request.path_params["case_id"]
        listing = Listing(self.readers)
        comparison = listing.comparison(name)
        table = listing.case_table(comparison)
        case = table.case(case_id)
        if case is None:
            ids = [c.case_id for c in table.cases]
            sample = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise NotFound(
                f"no case {case_id!r} in suite {name!r}; it has {len(ids)} cases"
                + (f" ({sample})" if ids else ""),
                nav=list(listing.suites),
            )
        previous, following = table.neighbours(case_id)
        links = links_for(request)
        return self._render(
            request,
            "case.html",
            listing,
            [(name, links.suite(name)), ("cases", links.cases(name)), (case_id, None)],
            comparison=comparison,
            table=table,
            case=case,
            previous=previous,
            following=following,
        )

    def partition(self, request: Request) -> Response:
        name, system = request.path_params["suite"], request.path_params["system"]
        listing = Listing(self.readers)
        comparison = listing.comparison(name)
        listing.require_system(comparison, system)
        html_report = self.readers.sources.reports_dir / name / f"{system}.html"
        return self._render(
            request,
            "partition.html",
            listing,
            [(name, links_for(request).suite(name)), (system, None)],
            comparison=comparison,
            report=comparison.reports[system],
            system=system,
            table=listing.case_table(comparison),
            html_report=html_report.is_file(),
        )

    def diff(self, request: Request) -> Response:
        name, system = request.path_params["suite"], request.path_params["system"]
        listing = Listing(self.readers)
        comparison = listing.comparison(name)
        listing.require_system(comparison, system)
        report = comparison.reports[system]
        trend = self.readers.warehouse().trend(name)
        links: ViewerLinks = links_for(request)
        cases = self._case_diff(request, comparison, system)
        return self._render(
            request,
            "diff.html",
            listing,
            [(name, links.suite(name)), (system, links.partition(name, system)), ("diff", None)],
            comparison=comparison,
            report=report,
            system=system,
            changes=metric_changes(report, trend),
            cases=cases,
            diff_sorts=DIFF_SORTS,
            shows=DIFF_SHOWS,
        )

    def _case_diff(
        self, request: Request, comparison: SuiteComparison, system: str
    ) -> CaseDiffView:
        """The two kept versions of the partition's scores to compare (the newest two unless
        ``previous``/``current`` name runs) and the query's filter; nothing to compare with
        fewer than two."""
        key = PartitionKey(comparison.suite, system)
        stored = self.readers.stored()
        versions = stored.score_versions(key)
        params = request.query_params
        metric = _metric_param(params, comparison)
        show = _choice(params, "show", DIFF_SHOWS, "changed")
        sort = _choice(params, "sort", DIFF_SORTS, "drop")
        current = _version(versions, params.get("current"), key)
        previous = _version(versions, params.get("previous"), key, before=current)
        spec = CaseDiffFilter(metric, show, sort)
        if current is None or previous is None:
            return CaseDiffView(versions, None, None, [], spec)
        order = [c.case_id for c in stored.cases(key) or []]
        metrics = comparison.metrics
        changes = diff_cases(
            stored.answers_in(key, previous, metrics),
            stored.answers_in(key, current, metrics),
            metrics,
            {m: comparison.pass_score(m) for m in metrics},
            order,
        )
        return CaseDiffView(versions, previous, current, changes, spec)

    def html_report(self, request: Request) -> Response:
        """The report's HTML file, served: a browser refuses ``file://`` links from the UI."""
        name, system = request.path_params["suite"], request.path_params["system"]
        listing = Listing(self.readers)
        listing.require_system(listing.comparison(name), system)
        path = self.readers.sources.reports_dir / name / f"{system}.html"
        if not path.is_file():
            raise NotFound(f"no HTML report for {name}|{system} at {path}")
        return FileResponse(path, media_type="text/html")

    def model(self, request: Request) -> Response:
        listing = Listing(self.readers)
        view = self._model_view(request.path_params["model"], listing)
        return self._render(
            request, "model.html", listing, [(f"model {view.model}", None)], view=view
        )

    def model_chart(self, request: Request) -> Response:
        view = self._model_view(request.path_params["model"], None, with_history=False)
        if not view.has_chart or view.chart is None:
            raise NotFound(f"no bake chart for model {view.model!r} yet; bake_profile draws it")
        return FileResponse(view.chart, media_type="image/png")

    def _model_view(
        self, model: str, listing: Listing | None, with_history: bool = True
    ) -> ModelView:
        known = self.readers.stored().models()
        if model not in known:
            nav = list(listing.suites) if listing else []
            raise NotFound(f"no model {model!r}; known models: {_known(known)}", nav=nav)
        return load_model_view(self.readers, model, with_history=with_history)
