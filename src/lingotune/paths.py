"""Where lingotune finds the shared real data.

Order: an explicit path (recipe field or --data-root), then $LINGOTUNE_DATA, then
`../shared/data` next to the current directory or next to this checkout.
Nothing is ever copied from there into the project.
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]  # <checkout>/src/lingotune/paths.py


def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data root, or None when none is found."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("LINGOTUNE_DATA")
    if env:
        return Path(env).expanduser().resolve()
    for base in (Path.cwd(), _CHECKOUT):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return None


def require_data_root(explicit: str | os.PathLike | None = None) -> Path:
    root = data_root(explicit)
    if root is None or not root.is_dir():
        raise FileNotFoundError(
            f"data root {str(root) if root else '../shared/data'!r} not found; set LINGOTUNE_DATA or --data-root"
        )
    return root
