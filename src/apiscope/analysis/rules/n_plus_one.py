"""n_plus_one: requests issuing the same statement many times (a query inside a loop).

The agent records, per request, each normalized statement with its count and the user-code
call site. A (route, statement, call site) is flagged when at least `n_plus_one_min_queries`
repetitions happen in a notable share of the route's requests (`n_plus_one_request_share`), so
one odd request does not raise it. Severity grows with the typical (median) repetition count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from apiscope.agent.queries import is_connection
from apiscope.analysis.advice import framework_of
from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import handler_location, location, make_flag, pct, where
from apiscope.analysis.stats import percentile
from apiscope.analysis.thresholds import grade

SUGGESTION = ("load the rows in one query (a join, WHERE id IN (...), or eager loading such as"
              " selectinload) instead of one query per item")
SUGGEST_DJANGO = ("load the rows in one query instead of one per item: select_related() for a"
                  " foreign key, prefetch_related() for a reverse or many-to-many relation (on"
                  " the view's queryset, e.g. get_queryset())")


@dataclass(slots=True)
class _Site:
    counts: list[int] = field(default_factory=list)
    query_ms: float = 0.0
    request_ms: float = 0.0


def _shorten(sql: str, width: int = 80) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class NPlusOneRule:
    kind = "n_plus_one"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        th = ctx.thresholds
        flags = []
        for endpoint in sorted(ctx.by_endpoint):
            records = ctx.by_endpoint[endpoint]
            sites: dict[tuple[str, str | None, int | None], _Site] = defaultdict(_Site)
            for record in records:
                for q in record.queries:
                    # Connections opened are no query (`slow_endpoint` tells their cost).
                    if q.count >= th.n_plus_one_min_queries and not is_connection(q.statement):
                        site = sites[(q.statement, q.file, q.line)]
                        site.counts.append(q.count)
                        site.query_ms += q.total_ms
                        site.request_ms += record.duration_ms
            needed = max(1.0, th.n_plus_one_request_share * len(records))
            for (statement, file, line), site in sorted(
                    sites.items(), key=lambda kv: (-len(kv[1].counts), kv[0][0])):
                if len(site.counts) < needed:
                    continue
                flags.append(self._flag(ctx, endpoint, statement, file, line, site,
                                        len(records)))
        return flags

    def _flag(self, ctx: AnalysisContext, endpoint: str, statement: str, file: str | None,
              line: int | None, site: _Site, requests: int) -> Flag:
        median = percentile(sorted(site.counts), 0.5)
        severity = grade(median, ctx.thresholds.n_plus_one_count) or "low"
        share = len(site.counts) / requests
        time_share = site.query_ms / site.request_ms if site.request_ms else 0.0
        loc = location(file, line, ctx.function_at(file, line))
        source = f"from {where(loc)}"
        if file is not None and line is not None and (file, line) in ctx.dispatch:
            # The nearest application line is middleware passing the request on: the queries
            # ran in the framework's code below it (a serializer's related field).
            loc = handler_location(ctx, endpoint) or loc
            source = f"in the framework's code serving {where(loc)}"
        evidence = (f"{pct(share)} of {endpoint} requests ran `{_shorten(statement)}`"
                    f" {median:.0f} times (median, max {max(site.counts)}) {source},"
                    f" {pct(time_share)} of their time")
        metric = {"median_count": median, "max_count": max(site.counts),
                  "request_share": share, "query_time_share": time_share}
        # The route's framework, else the session's (a route never sampled at a low rate).
        framework = (framework_of(a.sample.frames for a in ctx.samples if a.endpoint == endpoint)
                     or framework_of(a.sample.frames for a in ctx.samples[:200]))
        django = framework == "django"
        return make_flag(self.kind, severity, endpoint, loc, evidence, metric,
                         SUGGEST_DJANGO if django else SUGGESTION)
