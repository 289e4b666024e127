"""The parts of one collecting run, each small enough to test with fakes.

`apiscope.collection.Collection` is the orchestrator; it hands the work to:

- `workers.WorkerSet`: which processes are pulled from, injected and detached, as workers come
  and go;
- `fanout.RecordSink`: every record goes to the session and to the live metrics in one place;
- `failures.FailureLog`: what went wrong, per process, kept in the session for the report;
- `status`: the status line and the --verbose lines, pure functions of counters;
- `figures`: the few numbers computed from what the collectors deliver.
"""
