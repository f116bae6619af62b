"""How a document that names other files (a STAC item or collection, a manifest) writes their paths, so that it
travels with them."""

from __future__ import annotations

import os
from pathlib import Path


def href_from(document: str | Path, target: str | Path) -> str:
    """How the file ``document`` names ``target``: a URL as it is, a path relative to the document's folder with
    forward slashes (so that the document travels with what it names)."""
    text = str(target)
    if "://" in text:
        return text
    return Path(os.path.relpath(Path(text).resolve(), Path(document).resolve().parent)).as_posix()
