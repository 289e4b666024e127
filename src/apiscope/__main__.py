from apiscope.cli.main import entry

entry()
