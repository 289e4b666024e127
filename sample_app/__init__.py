"""The sample item API: a small FastAPI service with deliberate, documented bottlenecks.

It is apiscope's demo target (`apiscope demo`) and a worked example of each mistake apiscope
flags, with the fixed version of every mistake beside it (`SAMPLE_APP_FIXED=1`).
"""
