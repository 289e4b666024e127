"""Corpus apps. Each serves a healthy mode and, with CORPUS_PLANTED=1, planted bottlenecks.

A planted line ends with `# planted: KIND CAUSE` (KIND a report flag kind, CAUSE `cpu`,
`native` or `wait`: see `tests.corpus.markers`); the harness reads these markers to know what
the report must find.
"""
