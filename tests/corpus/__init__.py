"""The accuracy corpus: realistic apps run for real under apiscope, and their scorecard."""
