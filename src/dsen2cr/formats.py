"""What a file holds, recognised by its content, never by its name (docs/design.md §3.4): weights are loaded by
what they are, and no command replaces a file that holds another kind of data than it writes."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

#: Human names of the kinds :func:`sniff` tells apart.
DESCRIPTIONS = {
    "safetensors": "safetensors weights file",
    "pytorch": "PyTorch checkpoint (torch.save)",
    "hdf5": "HDF5 file (Keras weights)",
    "geotiff": "TIFF/GeoTIFF raster",
    "png": "PNG image",
    "jp2": "JPEG 2000 image",
    "onnx": "ONNX model",
    "zip": "zip archive",
    "text": "text file",
    "json": "JSON file",
    "empty": "empty file",
    "unknown": "file of unknown kind",
}
#: The file name endings each kind of output must have (what other tools open it by).
SUFFIXES = {
    "safetensors": (".safetensors",),
    "onnx": (".onnx",),
    "geotiff": (".tif", ".tiff"),
    "png": (".png",),
    "json": (".json",),
    "text": (".csv", ".tsv", ".txt", ".md", ".yaml", ".json"),
}
#: What :func:`sniff` calls the files of a kind it does not tell apart by content (a JSON file is text).
SNIFFED_AS = {"json": "text"}
#: torch.save's legacy (pickle) format: protocol 2, then its magic number 0x1950a86a20f9469cfc6c.
_TORCH_LEGACY = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_MAGIC = (
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"II*\x00", "geotiff"),
    (b"MM\x00*", "geotiff"),
    (b"II+\x00", "geotiff"),
    (b"MM\x00+", "geotiff"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\x00\x00\x00\x0cjP  ", "jp2"),
)


def sniff(path: str | Path) -> str:
    """The kind of data in ``path`` (a key of :data:`DESCRIPTIONS`), from its first bytes."""
    path = Path(path)
    with path.open("rb") as file:
        head = file.read(4096)
    if not head:
        return "empty"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if len(head) >= 9 and head[8:9] == b"{":  # a little-endian header length, then the JSON header
        (header,) = struct.unpack("<Q", head[:8])
        if 8 + header <= path.stat().st_size:
            return "safetensors"
    if head.startswith(_TORCH_LEGACY):
        return "pytorch"
    if head[:1] == b"\x08" and path.suffix.lower() == ".onnx":
        return "onnx"  # a protobuf whose first field is ir_version
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "unknown" if "\x00" in text else "text"


def _zip_kind(path: Path) -> str:
    """``pytorch`` for a zip that torch.save wrote (a ``data.pkl`` member), else ``zip``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "zip"
    return "pytorch" if any(name.endswith("data.pkl") for name in names) else "zip"


def describe(kind: str) -> str:
    """``a safetensors weights file``: the kind in words, with its article."""
    words = DESCRIPTIONS.get(kind, DESCRIPTIONS["unknown"])
    return ("an " if words[0] in "aeiouAEIOUH" else "a ") + words


def shortened_sha256(recorded: str) -> str:
    """A recorded weights digest (an output's ``DSEN2CR_WEIGHTS_SHA256``: one file's, or an ensemble's members' joined
    by ``;``) for people: each digest cut to its first 12 digits (``b1ab06776a88…; 1d9e8c82675b…``)."""
    return "; ".join(d if d == "unknown" or len(d) <= 12 else f"{d[:12]}…" for d in recorded.split(";"))
