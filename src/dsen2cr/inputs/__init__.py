"""Sentinel products as users have them: what ``--s2`` and ``--s1`` name, resolved into band files and the
radiometric facts the readers need (docs/design.md §4.5). By source kind: :mod:`~dsen2cr.inputs.geotiff`,
:mod:`~dsen2cr.inputs.safe` (folders and zips), :mod:`~dsen2cr.inputs.stac`; :mod:`~dsen2cr.inputs.readers`
reads the resolved inputs window by window.

``--s2`` takes a 13-band (L1C) or 12-band (L2A) GeoTIFF, a product folder (``.SAFE`` or ``IMG_DATA``), a zipped
product (``….SAFE.zip``, read in place through GDAL's ``/vsizip/``), or a STAC item (a JSON path or URL; remote
assets through ``/vsicurl/`` and ``/vsis3/``). Products of processing baseline 04.00 and later store
DN = reflectance × 10000 + 1000 and declare the shift per band (``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET`` −1000 in
``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml``; ``raster:bands`` scale and offset, or ``s2:processing_baseline``, in STAC):
the offsets are read here and removed by the reader before anything else.

``--s1`` takes a 2-band GeoTIFF (VV, VH), a pair ``VV.tif,VH.tif`` of single-band files on one grid, or a STAC
item with ``vv`` and ``vh`` assets; pairs become a 2-band GDAL VRT. Sentinel-1 products as delivered (amplitude in
radar geometry) are refused saying how to make what it takes (:mod:`~dsen2cr.inputs.s1_products`). Frames of one
pass (consecutive slices of a datatake, each holding part of a scene) are joined with ``+``
(``frame1.tif+frame2.tif``) and read as one S1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from dsen2cr.errors import DSen2CRError
from dsen2cr.inputs.geotiff import geotiff_s2, select_polarisations, stack_pair
from dsen2cr.inputs.product import MAX_OFFSET_DN, S2Product, is_url, plausible_offset, sensing_time_of_name
from dsen2cr.inputs.s1_products import refuse_s1_as_s2, refuse_s1_product
from dsen2cr.inputs.safe import safe_folder, zipped_safe
from dsen2cr.inputs.stac import is_stac, item_reference, s1_assets, stac_s1, stac_s2


def resolve_s2(arg: str | Path, *, offset: int | None = None) -> S2Product:
    """The :class:`S2Product` an ``--s2`` argument names (``offset``: ``--s2-offset`` for files whose metadata
    cannot say, i.e. GeoTIFFs and bare ``IMG_DATA`` folders)."""
    text = str(arg)
    if offset is not None and not (plausible_offset(offset) and offset <= 0):
        raise DSen2CRError(
            f"--s2-offset: {offset} is not an offset a Sentinel-2 product holds: they are added to the DN, -1000 "
            f"since baseline 04.00 (never positive, nor below -{MAX_OFFSET_DN})"
        )
    if is_stac(text):
        if offset is not None:
            raise DSen2CRError(f"{text}: --s2-offset is for GeoTIFFs; a STAC item declares its offsets")
        return stac_s2(text)
    refuse_s1_as_s2(text)
    path = Path(text)
    if path.suffix.lower() == ".zip":
        product = _with_offset_option(zipped_safe(path), offset)
    elif path.is_dir():
        product = _with_offset_option(safe_folder(path), offset)
    else:
        product = geotiff_s2(path, offset)
    if product.sensing_time is None:  # no metadata says: Sentinel-2's names do (the product's, else a band file's)
        names = (path.resolve().name, *(Path(file).name for file in product.files[:1]))
        product.sensing_time = next(filter(None, map(sensing_time_of_name, names)), None)
    return product


def _with_offset_option(product: S2Product, offset: int | None) -> S2Product:
    """Apply ``--s2-offset`` where the product has no metadata; refuse it where the metadata decides."""
    if offset is None:
        return product
    if product.offset_from == "metadata":
        raise DSen2CRError(f"{product.source}: --s2-offset given, but the product metadata declares its offsets")
    product.offsets, product.offset_from = [offset] * len(product.bands), "option"
    return product


#: Joins the frames of one S1 pass in an ``--s1`` value: ``frame1.tif+frame2.tif``.
FRAME_JOIN = "+"


def s1_frames(text: str, base: Path | None = None) -> list[str]:
    """The frames an ``--s1`` value joins with ``+`` (consecutive slices of one pass, read as one S1), each anything
    an ``--s1`` value takes (a file, a ``VV,VH`` pair, a STAC item); the value itself when it joins none or names an
    existing file (relative to ``base`` when given: ``+`` is a legal character of a file name). Refused: an empty
    frame (``a.tif+``), a frame given twice."""
    frames = _split(text, FRAME_JOIN, base)
    if len(frames) == 1:
        return frames
    if not all(frames):
        raise DSen2CRError(f"{text}: an empty frame; frames of one S1 pass are joined with + (frame1.tif+frame2.tif)")
    if len(set(frames)) < len(frames):
        raise DSen2CRError(f"{text}: a frame given twice; frames of one S1 pass are joined with + once each")
    return frames


def _pair_parts(text: str, base: Path | None) -> list[str]:
    """The files one frame of an ``--s1`` value names: the two of a ``VV,VH`` pair, else the frame itself."""
    return _split(text, ",", base)


def _split(text: str, separator: str, base: Path | None) -> list[str]:
    """``text`` split at ``separator`` (each part stripped), unless it holds none or names an existing file (relative
    to ``base`` when given): then ``[text]``. Where a folder's name holds the separator (``S1+S2/a.tif+S1+S2/b.tif``),
    at the places where every part names an existing file (a pair's files each, for frames), or a URL; where none
    does, at every separator (the file missing is named when read); where two splits do, refused."""
    if separator not in text or _exists(text, base):
        return [text]
    pieces = text.split(separator)
    fits = list(_splits_into_existing(pieces, separator, base))
    if len(fits) > 1:
        raise DSen2CRError(
            f"{text}: splits at {separator} two ways into existing files ({' | '.join(map(repr, fits[:2]))}); name "
            f"them through links without {separator}"
        )
    return fits[0] if fits else [piece.strip() for piece in pieces]


def _exists(text: str, base: Path | None) -> bool:
    """Whether ``text`` names an existing file or folder (relative to ``base`` when given), or the document of an
    item of an ItemCollection (``items.json#ID``) that exists."""
    document = item_reference(text.strip())[0]
    return (Path(document) if base is None else base / document).exists()


def _splits_into_existing(pieces: list[str], separator: str, base: Path | None) -> Iterator[list[str]]:
    """Each way of joining consecutive ``pieces`` (back with ``separator``) into parts that each name what exists:
    a file (for frames, ``+``: a frame's pair, each file), or a URL of one piece."""
    for end in range(1, len(pieces) + 1):
        part = separator.join(pieces[:end]).strip()
        names = _pair_parts(part, base) if separator == FRAME_JOIN else [part]
        if all(_exists(name, base) or (end == 1 and is_url(name)) for name in names):
            if end == len(pieces):
                yield [part]
            else:
                yield from ([part, *rest] for rest in _splits_into_existing(pieces[end:], separator, base))


def s1_parts(text: str, base: Path | None = None) -> list[str]:
    """The files an ``--s1`` value names, frame after frame (:func:`s1_frames`): the two of a ``VV,VH`` pair, else
    the frame: one without a comma, or an existing file's (relative to ``base`` when given; a comma is a legal
    character of a file name; an S2 value is never split)."""
    return [part for frame in s1_frames(text, base) for part in _pair_parts(frame, base)]


def map_s1_files(text: str, change: Callable[[str], str], base: Path | None = None) -> str:
    """An ``--s1`` value with each file it names (:func:`s1_parts`) replaced by ``change(file)``, its frames and
    pairs kept (``a_vv.tif,a_vh.tif+b.tif``): for paths made relative to a manifest, or file names in a tag."""
    return FRAME_JOIN.join(
        ",".join(change(part) for part in _pair_parts(frame, base)) for frame in s1_frames(text, base)
    )


def local_inputs(s2: str, s1: str | None, product: S2Product | None = None) -> list[tuple[str, Path]]:
    """Every local file or folder a scene reads, as ``(role, path)``: the ``--s2`` value (a file, a product
    folder or zip, a STAC item) and, when resolved, its band files and product masks; the ``--s1`` file(s) and
    the assets of an S1 STAC item. Remote inputs (URLs, ``/vsicurl/``) have no local path."""
    found: list[tuple[str, Path]] = [] if is_url(s2) else [("s2", Path(item_reference(s2)[0]))]
    if product is not None:
        found += [("s2", Path(f)) for f in [*product.files, *product.masks.values()] if _is_local(f)]
    for part in s1_parts(s1) if s1 else []:
        if is_stac(part):
            found += [("s1", Path(f)) for f in s1_assets(part) if _is_local(f)]
        if not is_url(part):
            found.append(("s1", Path(item_reference(part)[0])))
    return found


def _is_local(gdal_path: str) -> bool:
    """Whether a GDAL path is a local file (not ``/vsi…``, not a URL, not a VRT's XML: its files are named besides)."""
    return not gdal_path.startswith(("/vsi", "<")) and not is_url(gdal_path)


def resolve_s1(arg: str | Path, local: Mapping[str, str] | None = None) -> str:
    """A GDAL path with VV and VH as bands 1 and 2: the file itself, or a VRT of a ``VV,VH`` pair or of the
    ``vv``/``vh`` assets of a STAC item (from their ``local`` copies where a scene fetched them)."""
    text = str(arg)
    if len(s1_frames(text)) > 1:
        raise DSen2CRError(f"{text}: frames joined with + are read one by one (dsen2cr.inputs.s1.S1Source)")
    parts = s1_parts(text)
    for part in parts:
        refuse_s1_product(part)
    if is_stac(text):
        return stac_s1(text, local)
    if len(parts) > 1:
        if len(parts) != 2 or not all(parts):
            raise DSen2CRError(f"{text}: an S1 pair is two files, VV,VH")
        return stack_pair(parts[0], parts[1], text)
    return select_polarisations(text)


__all__ = [
    "S2Product",
    "is_stac",
    "local_inputs",
    "map_s1_files",
    "resolve_s1",
    "resolve_s2",
    "s1_frames",
    "s1_parts",
]
