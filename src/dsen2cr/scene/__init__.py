"""Whole-scene cloud removal: tiled, seamless, georeferenced inference with bounded memory.

By job (docs/design.md §4): :mod:`~dsen2cr.scene.tiles` plans the windows, :mod:`~dsen2cr.scene.batches` runs
them through a predictor, :mod:`~dsen2cr.scene.masking` maps cloud and shadow for ``--keep-clear`` and
``--mask-out``, :mod:`~dsen2cr.scene.sources` opens a scene's inputs, :mod:`~dsen2cr.scene.remove` writes one
scene, :mod:`~dsen2cr.scene.jobs` runs many (manifest, torchrun ranks). Inputs are resolved and read in
:mod:`dsen2cr.inputs`, outputs completed in :mod:`dsen2cr.outputs`; the settings and plan in
:mod:`dsen2cr.settings` and :mod:`dsen2cr.auto`.
"""
