from __future__ import annotations

import sys
from pathlib import Path

# The sample app lives at the repository root, beside src/.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
