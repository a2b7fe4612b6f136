"""Write the JSONL rows of a reference run (bench/helm_local.py, bench/lighteval_local.py).

Standard library only: it runs inside the references' own virtual environments, which need
not have polars (mmlu_flavors.io does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterable


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """One JSON object per line, written to a temporary file beside `path` and renamed (a
    killed run leaves no partial file); returns the number of rows and says so on stderr."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(out)
    print(f"{n} rows -> {out}", file=sys.stderr)
    return n
