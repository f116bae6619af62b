"""dsen2cr: cloud removal for Sentinel-2 with Sentinel-1 SAR fusion (DSen2-CR, Meraner et al. 2020).

The model registry, preprocessing, masks, losses and metrics import without the training stack (Lightning).
Every public name is imported on first use, so that ``import dsen2cr`` imports no torch: the command line's
``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsen2cr.version import __version__

if TYPE_CHECKING:  # what type checkers and editors see; at run time each is imported when first asked for
    from dsen2cr.ensemble import load_ensemble
    from dsen2cr.models import VARIANTS, create_model, get_variant
    from dsen2cr.models.dsen2cr import DSen2CR
    from dsen2cr.predictor import load_predictor
    from dsen2cr.scene.arrays import remove_clouds_array
    from dsen2cr.scene.remove import remove_clouds
    from dsen2cr.settings import SceneJob, SceneSettings

#: Public names imported on first use: name -> module.
_LAZY = {
    "VARIANTS": "dsen2cr.models",
    "create_model": "dsen2cr.models",
    "get_variant": "dsen2cr.models",
    "DSen2CR": "dsen2cr.models.dsen2cr",
    "load_predictor": "dsen2cr.predictor",
    "load_ensemble": "dsen2cr.ensemble",
    "remove_clouds": "dsen2cr.scene.remove",
    "remove_clouds_array": "dsen2cr.scene.arrays",
    "SceneJob": "dsen2cr.settings",
    "SceneSettings": "dsen2cr.settings",
}


def __getattr__(name: str) -> Any:
    """``dsen2cr.load_predictor``, ``dsen2cr.remove_clouds``, ...: imported when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dsen2cr' has no attribute {name!r}")


__all__ = [
    "VARIANTS",
    "DSen2CR",
    "SceneJob",
    "SceneSettings",
    "__version__",
    "create_model",
    "get_variant",
    "load_ensemble",
    "load_predictor",
    "remove_clouds",
    "remove_clouds_array",
]
