"""TIFF directories read and written byte by byte: what :mod:`dsen2cr.outputs.cog_stream` needs to take GDAL's
tags from one file and write them, with its own tile positions, into another (little-endian TIFF and BigTIFF)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dsen2cr.errors import DSen2CRError

#: Bytes per value of each TIFF field type.
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
ASCII, SHORT, LONG, LONG8 = 2, 3, 4, 16
#: GDAL's metadata (band names, scales, tags, statistics) as XML.
GDAL_METADATA = 42112


@dataclass(frozen=True)
class TiffTag:
    """One TIFF directory entry: tag code, field type, value count and the value's little-endian bytes."""

    code: int
    type: int
    count: int
    value: bytes


def read_first_directory(path: Path) -> dict[int, TiffTag]:
    """The tags of the first directory of a little-endian TIFF or BigTIFF (as GDAL writes them), by code."""
    data = path.read_bytes()
    if data[:2] != b"II" or struct.unpack_from("<H", data, 2)[0] not in (42, 43):
        raise DSen2CRError(f"{path}: not a little-endian TIFF")
    big = struct.unpack_from("<H", data, 2)[0] == 43
    count_format, entry_format, field_size = ("<Q", "<HHQ", 8) if big else ("<H", "<HHI", 4)
    offset = struct.unpack_from("<Q" if big else "<I", data, 8 if big else 4)[0]
    (entries,) = struct.unpack_from(count_format, data, offset)
    position = offset + struct.calcsize(count_format)
    tags: dict[int, TiffTag] = {}
    for _ in range(entries):
        code, kind, count = struct.unpack_from(entry_format, data, position)
        field_at = position + struct.calcsize(entry_format)
        size = count * _TYPE_SIZES[kind]
        if size <= field_size:
            value = data[field_at : field_at + size]
        else:
            (at,) = struct.unpack_from("<Q" if big else "<I", data, field_at)
            value = data[at : at + size]
        tags[code] = TiffTag(code, kind, count, value)
        position = field_at + field_size
    return tags


def numbers(code: int, kind: int, values: Sequence[int]) -> TiffTag:
    """A tag of unsigned integers of field type ``kind``."""
    letter = {SHORT: "H", LONG: "I", LONG8: "Q"}[kind]
    return TiffTag(code, kind, len(values), struct.pack(f"<{len(values)}{letter}", *values))


def size_tag(code: int, value: int) -> TiffTag:
    """A width or height: SHORT when it fits (as GDAL writes it), else LONG."""
    return numbers(code, SHORT if value < 65536 else LONG, [value])


def directory_size(tags: Sequence[TiffTag], bigtiff: bool) -> int:
    """Bytes of a directory with ``tags``, its values that do not fit their entry included (each word-aligned)."""
    entry, field_size, head = (20, 8, 16) if bigtiff else (12, 4, 6)
    size = head + entry * len(tags)
    for tag in tags:
        if len(tag.value) > field_size:
            size += len(tag.value) + len(tag.value) % 2
    return size


def directory(tags: Sequence[TiffTag], at: int, next_directory: int, bigtiff: bool) -> bytes:
    """The bytes of a directory written at offset ``at``: entries sorted by code, then the next directory's
    offset, then the values too long for their entry."""
    entry_format, field_size = ("<HHQ", 8) if bigtiff else ("<HHI", 4)
    offset_format = "<Q" if bigtiff else "<I"
    ordered = sorted(tags, key=lambda tag: tag.code)
    out = bytearray(struct.pack("<Q" if bigtiff else "<H", len(ordered)))
    extra = bytearray()
    extra_at = at + (16 if bigtiff else 6) + (20 if bigtiff else 12) * len(ordered)
    for tag in ordered:
        out += struct.pack(entry_format, tag.code, tag.type, tag.count)
        if len(tag.value) <= field_size:
            out += tag.value.ljust(field_size, b"\0")
        else:
            out += struct.pack(offset_format, extra_at + len(extra))
            extra += tag.value + b"\0" * (len(tag.value) % 2)
    out += struct.pack(offset_format, next_directory) + extra
    return bytes(out)


def with_metadata_items(metadata: TiffTag | None, items: dict[int, dict[str, str]]) -> TiffTag:
    """GDAL's metadata tag with band items (``sample`` is the 0-based band) added."""
    root = (
        ElementTree.fromstring(metadata.value.rstrip(b"\0").decode())
        if metadata is not None
        else ElementTree.Element("GDALMetadata")
    )
    for band, named in items.items():
        for name, value in named.items():
            ElementTree.SubElement(root, "Item", name=name, sample=str(band - 1)).text = value
    text = ElementTree.tostring(root, encoding="unicode").encode() + b"\0"
    return TiffTag(GDAL_METADATA, ASCII, len(text), text)
