"""dsen2cr: cloud removal for Sentinel-2 with Sentinel-1 SAR fusion (DSen2-CR, Meraner et al. 2020).

The model registry, preprocessing, masks, losses and metrics import without the training stack (Lightning).
``load_predictor``, ``remove_clouds`` and ``remove_clouds_array`` (and the settings they take) are imported on
first use, so that ``import dsen2cr`` stays light.
"""

from __future__ import annotations

from typing import Any

from dsen2cr.models import VARIANTS, create_model, get_variant
from dsen2cr.models.dsen2cr import DSen2CR
from dsen2cr.version import __version__

#: Public names imported on first use: name -> module.
_LAZY = {
    "load_predictor": "dsen2cr.predictor",
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
    "load_predictor",
    "remove_clouds",
    "remove_clouds_array",
]
