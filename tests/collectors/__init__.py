"""Tests of the collector side: py-spy, stack sampling, thread roles."""
