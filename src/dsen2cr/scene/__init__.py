"""Whole-scene cloud removal: tiled, seamless, georeferenced inference with bounded memory.

By job (docs/design.md §4): :mod:`~dsen2cr.scene.tiles` plans the windows, :mod:`~dsen2cr.scene.readers`
reads S2 and S1 window by window, :mod:`~dsen2cr.scene.batches` runs the windows through a predictor,
:mod:`~dsen2cr.scene.remove` writes one scene, :mod:`~dsen2cr.scene.jobs` runs many (manifest, torchrun ranks).
"""

from dsen2cr.scene.remove import SceneReport, remove_clouds
from dsen2cr.scene.tiles import Tile, default_overlap, plan_tiles

__all__ = ["SceneReport", "Tile", "default_overlap", "plan_tiles", "remove_clouds"]
