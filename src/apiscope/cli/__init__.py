"""The `apiscope` command line: one module per subcommand."""
