"""error_rate: a route answering 5xx for a notable share of its requests.

Flagged when the 5xx share reaches `error_share`'s low grade and at least `error_min_count`
requests failed (so two unlucky requests do not raise it). The evidence names the most common
exception type and the app's line that raised it, as the agent recorded them; where no line of
the app raised (a 5xx the handler returned, an exception raised in a library's code alone), the
flag is located at the route's handler. A 5xx the app raised on purpose (an `HTTPException` of
Starlette's, FastAPI's or Litestar's, such as a 503 shedding load) is no failure to catch: the
advice is then about the condition the app checked.
"""

from __future__ import annotations

from collections import Counter

from apiscope.analysis.context import AnalysisContext, Flag
from apiscope.analysis.flags import (
    MetricValue,
    handler_location,
    location,
    make_flag,
    pct,
    where,
)
from apiscope.analysis.thresholds import grade

SUGGESTION = ("handle the failure where it is raised (validate input, catch the expected"
              " exception and answer 4xx, retry or time out the dependency)")
# The app answered these itself, with the framework's exception for an HTTP status.
ANSWERED = ("HTTPException",)
SUGGESTION_ANSWERED = ("the app answers these 5xx on purpose, raising them at that line: fix"
                       " the condition it checks there (a queue or a pool full, a dependency"
                       " down); when it sheds load, a Retry-After header lets clients back off")


class ErrorRateRule:
    kind = "error_rate"

    def check(self, ctx: AnalysisContext) -> list[Flag]:
        th = ctx.thresholds
        flags = []
        for endpoint in sorted(ctx.by_endpoint):
            records = ctx.by_endpoint[endpoint]
            failed = [r for r in records if r.status >= 500]
            share = len(failed) / len(records)
            severity = grade(share, th.error_share)
            if severity is None or len(failed) < th.error_min_count:
                continue
            causes = Counter((r.exc_type, r.exc_file, r.exc_line) for r in failed)
            (exc_type, file, line), n = sorted(
                causes.items(), key=lambda kv: (-kv[1], str(kv[0])))[0]
            statuses = Counter(r.status for r in failed)
            evidence = f"{pct(share)} of {len(records)} requests answered 5xx"
            if file:
                loc = location(file, line, ctx.function_at(file, line))
                evidence += f"; {n} raised {exc_type} at {where(loc)}"
            else:
                # No line of the app raised (nothing did, or only code outside the app): the
                # route's handler is where to look.
                loc = handler_location(ctx, endpoint)
                handler = f"; the route's handler: {where(loc)}" if loc is not None else ""
                if exc_type:
                    evidence += (f"; {n} raised {exc_type} in code outside the app, no line of"
                                 f" it on the traceback{handler}")
                else:
                    evidence += (f" (status {statuses.most_common(1)[0][0]}, no exception"
                                 f" recorded{handler})")
            metric: dict[str, MetricValue] = {
                "error_rate": share, "errors": len(failed), "requests": len(records),
                "exception": exc_type,
                "statuses": {str(k): v for k, v in sorted(statuses.items())}}
            answered = file is not None and exc_type in ANSWERED
            flags.append(make_flag(self.kind, severity, endpoint, loc, evidence, metric,
                                   SUGGESTION_ANSWERED if answered else SUGGESTION))
        return flags
