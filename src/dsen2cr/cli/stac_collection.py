"""``dsen2cr stac-collection``: a STAC Collection of STAC items (a batch's ``remove-clouds --stac-item items/``)."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import SubParsers, add_command, add_overwrite


def register(subparsers: SubParsers) -> None:
    """Add ``stac-collection``."""
    parser = add_command(
        subparsers,
        "stac-collection",
        help="a STAC Collection of STAC items (a batch's --stac-item files): extent, summaries, links to each",
        description="Write a STAC 1.0.0 Collection of the items given: the bbox that holds them (the shortest run "
        "of longitudes that does, across the antimeridian where that is shorter), the time from the first to the "
        "last, summaries of "
        "their GSD, EPSG codes, constellations, instruments and the first item's bands, and a link to each item "
        "relative to the collection (a static catalogue that travels as a folder). The items are not rewritten.",
    )
    parser.add_argument("items", nargs="+", metavar="ITEM", help="STAC item files (items/*.json)")
    parser.add_argument("--out", required=True, help="the collection to write (items/collection.json)")
    parser.add_argument("--id", dest="collection_id", help="the collection's id (default: the folder's name)")
    parser.add_argument("--title", help="a title for the collection")
    parser.add_argument("--description", help="its description (default: what made the items, and how many)")
    add_overwrite(parser, "replace an existing collection")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``stac-collection``."""
    from pathlib import Path

    from dsen2cr.scene.stac_collection import write_collection

    out = Path(args.out)
    collection = write_collection(
        [Path(item) for item in args.items],
        out,
        collection_id=args.collection_id,
        title=args.title,
        description=args.description,
        overwrite=args.overwrite,
    )
    spatial, temporal = collection["extent"]["spatial"]["bbox"][0], collection["extent"]["temporal"]["interval"][0]
    count = sum(link["rel"] == "item" for link in collection["links"])
    print(
        f"wrote {out}: collection {collection['id']!r} of {count} item{'s' if count != 1 else ''}, "
        f"bbox {' '.join(f'{v:.5f}' for v in spatial)}, {temporal[0]} to {temporal[1]}"
    )
    return 0
