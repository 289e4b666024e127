"""The item app with the agent added in code, as `apiscope.instrument(app)` users do."""

from __future__ import annotations

import apiscope
from tests.operator.item_app import app

apiscope.instrument(app)

__all__ = ["app"]
