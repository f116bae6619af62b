"""Bad input to ``dsen2cr stac-collection``, table-driven through the console entry point (the ``check_case``
fixture): the command exits 2 with one line on stderr naming the file or option and the problem, no traceback,
the items unchanged, no collection left behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def _item(tmp: Path, name: str = "a.json", **changes: object) -> Path:
    """A minimal STAC item ``tmp/name``, its fields changed (None removes one)."""
    item: dict = {
        "type": "Feature",
        "id": Path(name).stem,
        "bbox": [9.0, 45.0, 10.0, 46.0],
        "properties": {"datetime": "2023-06-10T10:15:59Z"},
        "assets": {},
    }
    for key, value in changes.items():
        if value is None:
            item.pop(key, None)
        else:
            item[key] = value
    (tmp / name).write_text(json.dumps(item))
    return tmp / name


def _collect(tmp: Path, *items: Path, out: str = "collection.json", extra: tuple[str, ...] = ()) -> list[str]:
    return ["stac-collection", *map(str, items), "--out", str(tmp / out), *extra]


CASES = [
    dict(
        name="stac-collection: an item that is not JSON",
        setup=lambda t: (t / "a.json").write_text("{not json") and _collect(t, t / "a.json"),
        message="a.json: not a STAC item (not valid JSON",
        keep=("a.json",),
        absent=("collection.json",),
    ),
    dict(
        name="stac-collection: a Feature without a bbox",
        setup=lambda t: _collect(t, _item(t, bbox=None)),
        message="a.json: STAC item 'a' has no bbox of four numbers (west, south, east, north)",
        keep=("a.json",),
        absent=("collection.json",),
    ),
    dict(
        name="stac-collection: an item without a datetime",
        setup=lambda t: _collect(t, _item(t, properties={"datetime": None})),
        message="a.json: STAC item 'a' has no datetime (nor start_datetime)",
        keep=("a.json",),
        absent=("collection.json",),
    ),
    dict(
        name="stac-collection: a FeatureCollection given as an item",
        setup=lambda t: _collect(t, _item(t, type="FeatureCollection")),
        message="a.json: not a STAC item (no Feature with an id)",
        keep=("a.json",),
        absent=("collection.json",),
    ),
    dict(
        name="stac-collection: two items of one id",
        setup=lambda t: _collect(t, _item(t), _item(t, "b.json", id="a")),
        message="b.json: STAC item id 'a' is also ",
        keep=("a.json", "b.json"),
        absent=("collection.json",),
    ),
    dict(
        name="stac-collection: --out not named .json",
        setup=lambda t: _collect(t, _item(t), out="collection.xml"),
        message="collection.xml: this command writes a JSON file; name it *.json",
        absent=("collection.xml",),
    ),
    dict(
        name="stac-collection: --out one of the items, --overwrite",
        setup=lambda t: _collect(t, _item(t), _item(t, "b.json"), out="b.json", extra=("--overwrite",)),
        message="b.json: output out would replace",
        keep=("a.json", "b.json"),
    ),
    dict(
        name="stac-collection: an existing collection without --overwrite",
        setup=lambda t: (t / "collection.json").write_text("{}") and _collect(t, _item(t)),
        message="collection.json: exists; pass --overwrite to replace it",
        keep=("collection.json",),
    ),
    dict(
        name="stac-collection: an item that does not exist",
        setup=lambda t: _collect(t, t / "missing.json"),
        message="missing.json: STAC item file not found",
        absent=("collection.json",),
    ),
]


def test_bad_input(bad_input: dict, check_case: Callable[[dict], None]) -> None:
    """Each row of ``CASES`` (parametrized by the ``bad_input`` hook in conftest.py)."""
    check_case(bad_input)
