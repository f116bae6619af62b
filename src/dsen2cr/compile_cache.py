"""Where compiled code outlives the process (docs/design.md §4.3): inductor's persistent caches go to a folder of
the user's (``$DSEN2CR_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsen2cr``, else ``~/.cache/dsen2cr``) instead of
``/tmp``, and the seconds each compiled build took are recorded there, so that ``--backend auto`` knows what
compiling will cost the next run: a build found in the cache costs seconds, a first build tens of seconds."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from dsen2cr.models import ModelSpec

log = logging.getLogger(__name__)

CACHE_ENV = "DSEN2CR_CACHE_DIR"
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
BUILDS_FILE = "builds.json"
#: Share of the eager time that the compiled backend saves on CPU (measured: 1.2-1.4x eager on long runs): what
#: ``--backend auto`` expects to gain, and how the cost of a build is told apart from its first forward pass.
COMPILE_SAVING = 0.25


def cache_dir() -> Path:
    """The project's cache folder: ``$DSEN2CR_CACHE_DIR``, else ``$XDG_CACHE_HOME/dsen2cr``, else
    ``~/.cache/dsen2cr`` (not created here)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsen2cr"


def use_persistent_compile_cache() -> Path | None:
    """Point inductor's on-disk caches at ``cache_dir()/inductor`` (unless the user set
    ``$TORCHINDUCTOR_CACHE_DIR``); call before compiling. Returns the folder in use, or None when it cannot be
    created (compiling still works, with inductor's default under /tmp)."""
    current = os.environ.get(INDUCTOR_ENV)
    if current and current != _inductor_default():  # the user's own choice (inductor writes its default there)
        return Path(current)
    folder = cache_dir() / "inductor"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("compile cache: cannot create %s (%s); compiled code is not kept between runs", folder, error)
        return None
    os.environ[INDUCTOR_ENV] = str(folder)
    return folder


def _inductor_default() -> str | None:
    """The folder inductor uses when none is set (it records it in the environment on first use)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        return os.path.abspath(default_cache_dir())
    except (ImportError, AttributeError):  # a PyTorch without that helper: any setting counts as the user's
        return None


def build_key(config: ModelSpec, shape: tuple[int, int, int], device: torch.device) -> str:
    """What a compiled build depends on: PyTorch, the device type, the model's shape and the window shape."""
    return f"torch {torch.__version__} {device.type} {json.dumps(config.to_dict(), sort_keys=True)} {list(shape)}"


def recorded_build_seconds(key: str) -> float | None:
    """Seconds the last build of ``key`` took to compile and check, if one is recorded."""
    try:
        value = json.loads((cache_dir() / BUILDS_FILE).read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def record_build_seconds(key: str, seconds: float) -> None:
    """Record how long building ``key`` took (best effort: a read-only cache only loses the record)."""
    from dsen2cr.outputs.files import write_text_atomic

    path = cache_dir() / BUILDS_FILE
    try:
        builds = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(builds, dict):
            builds = {}
        builds[key] = round(seconds, 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(builds, indent=1, sort_keys=True) + "\n")
    except (OSError, ValueError) as error:
        log.debug("compile cache: build time not recorded (%s)", error)
