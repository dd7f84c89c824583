"""The one way every bench writes its --json file."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def write_json(path: Path | None, result: Any) -> None:
    """Write `result` to `path` (parents made) and say so on stderr; nothing when no path."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
