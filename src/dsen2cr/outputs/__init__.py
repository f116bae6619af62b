"""Everything the project writes, in one place (docs/design.md §3.4): atomic writes and the one ``--overwrite``
policy (:mod:`~dsen2cr.outputs.files`), GeoTIFF and Cloud-Optimised GeoTIFF writing
(:mod:`~dsen2cr.outputs.geotiff`), and the completion of a scene's outputs, in the background while the next
scene runs on a GPU (:mod:`~dsen2cr.outputs.finisher`)."""
