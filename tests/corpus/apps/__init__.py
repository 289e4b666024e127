"""Corpus apps. Each serves a healthy mode and, with CORPUS_PLANTED=1, planted bottlenecks.

A planted line ends with `# planted: KIND CAUSE` (KIND a report flag kind, CAUSE `cpu` or
`wait`); the harness reads these markers to know what the report must find.
"""
