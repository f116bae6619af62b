"""``dsen2cr pair``: each S2 scene paired with the S1 acquisition nearest to it in time that covers it, written as a
``remove-clouds --manifest``."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from dsen2cr.cli.options import SubParsers, add_command, add_overwrite, finite_float

#: The manifest's other output columns that pair can fill with a folder (remove-clouds names each file in it).
FOLDER_COLUMNS = {
    "mask_out": "cloud/shadow map",
    "preview": "quicklook",
    "uncertainty_out": "sigma file",
    "stac_item": "STAC item",
}


def register(subparsers: SubParsers) -> None:
    """Add ``pair``."""
    parser = add_command(
        subparsers,
        "pair",
        help="pair each S2 scene with the S1 nearest to it in time that covers it: a remove-clouds manifest",
        description="For each S2 scene (any --s2 input of remove-clouds), the S1 acquisition among those given that "
        "lies nearest in time to it (S1's date from its STAC item, its metadata or its name) and holds data under "
        "at least --min-cover of the scene's valid pixels; written as a remove-clouds manifest (s2,s1,out, paths "
        "relative to it). Every S2 scene must get one.",
    )
    add_collection(parser, "scenes.csv")
    parser.add_argument(
        "--images",
        metavar="DIR",
        help="the folder of the cloud-free images the manifest names (<scene>_cloudfree.tif; default: the manifest's)",
    )
    parser.add_argument(
        "--min-cover",
        type=finite_float,
        metavar="SHARE",
        default=0.95,
        help="the share of a scene's valid pixels an S1 must hold data under (default: %(default)s)",
    )
    for option, what in FOLDER_COLUMNS.items():
        parser.add_argument(
            f"--{option.replace('_', '-')}",
            metavar="DIR",
            help=f"also a {option} column: each scene's {what} in this folder, named after its image",
        )
    add_s1_choice(parser, same=True)
    parser.set_defaults(handler=run)


def add_collection(parser: argparse.ArgumentParser, manifest: str) -> None:
    """The scenes and S1 candidates a pairing command chooses from, and the manifest it writes (``--out``, named
    like ``manifest``)."""
    parser.add_argument("--s2", nargs="+", required=True, help="S2 scenes: GeoTIFFs, .SAFE folders or zips, STAC items")
    parser.add_argument(
        "--s1", nargs="+", required=True, help="S1 candidates: VV+VH GeoTIFFs, VV.tif,VH.tif pairs, STAC items"
    )
    parser.add_argument("--out", required=True, help=f"the manifest to write ({manifest})")


def add_s1_choice(parser: argparse.ArgumentParser, *, same: bool = False) -> None:
    """Which S1 a pairing command may choose (``--s1-max-days``, ``--orbit``, ``--relative-orbit``; ``same``: it
    takes ``--relative-orbit same``), how it reads S2 GeoTIFF exports (``--s2-offset``), and ``--overwrite`` of its
    manifest."""
    parser.add_argument("--s1-max-days", type=finite_float, metavar="DAYS", help="choose no S1 further than DAYS")
    parser.add_argument(
        "--orbit",
        choices=["ascending", "descending"],
        help="only S1 of this pass (a STAC item's sat:orbit_state, a file's ORBIT_DIRECTION tag): one direction keeps "
        "a series' look (the slopes S1 sees, its time of day)",
    )
    parser.add_argument(
        "--relative-orbit",
        nargs="+",
        metavar="N",
        default=[],
        help="only S1 of these relative orbits (1-175; a STAC item's sat:relative_orbit, a product's name or its "
        "MISSION_ID and ORBIT_NUMBER tags): one track sees each place from one angle, every 12 days"
        + ("; same: the one that serves every scene, nearest in time on average" if same else ""),
    )
    parser.add_argument("--s2-offset", type=int, help="DN offset of GeoTIFFs exported from baseline 04.00+ products")
    add_overwrite(parser, "replace an existing manifest")


def run(args: argparse.Namespace) -> int:
    """Run ``pair``: check the options and the manifest's place, pair, print a line a scene, write the manifest."""
    import logging

    from dsen2cr.errors import DSen2CRError
    from dsen2cr.inputs import map_s1_files
    from dsen2cr.inputs.pairing import SAME_TRACK, pair_scenes
    from dsen2cr.inputs.s1_time import GAP_WARNING_DAYS, gap_text, pass_text
    from dsen2cr.outputs.files import write_text_atomic
    from dsen2cr.outputs.hrefs import href_from
    from dsen2cr.scene.jobs import scene_stem

    manifest = checked_manifest(args.out, args.s2, args.s1, overwrite=args.overwrite)
    images = Path(args.images) if args.images is not None else manifest.parent
    if not images.is_dir():
        raise DSen2CRError(f"--images {images}: folder does not exist")
    folders = {name: Path(getattr(args, name)) for name in FOLDER_COLUMNS if getattr(args, name) is not None}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise DSen2CRError(f"--{name.replace('_', '-')} {folder}: folder does not exist")
    pairings = pair_scenes(
        args.s2,
        args.s1,
        s2_offset=args.s2_offset,
        min_cover=args.min_cover,
        max_days=args.s1_max_days,
        orbit=args.orbit,
        tracks=SAME_TRACK if args.relative_orbit == [SAME_TRACK] else relative_orbits(args.relative_orbit, same=True),
    )
    stems = [scene_stem(pairing.s2) for pairing in pairings]
    if len(set(stems)) < len(stems):
        twice = next(stem for stem in stems if stems.count(stem) > 1)
        raise DSen2CRError(f"--s2: two scenes named {twice}: their images would have one name; rename one")
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["s2", "s1", "out", *folders])
    columns = [href_from(manifest, folder) + "/" for folder in folders.values()]
    log = logging.getLogger(__name__)
    for pairing, stem in zip(pairings, stems, strict=True):
        on_pass = pass_text(pairing.orbit, pairing.track)
        print(
            f"{pairing.s2}: S1 {pairing.s1}, {gap_text(pairing.days)}, covering {pairing.cover:.0%} of the scene"
            + on_pass
        )
        if abs(pairing.days) > GAP_WARNING_DAYS:
            log.warning("%s: the nearest S1 that covers it was sensed %s", pairing.s2, gap_text(pairing.days))
        s1 = map_s1_files(pairing.s1, lambda part: href_from(manifest, part))
        image = href_from(manifest, images / f"{stem}_cloudfree.tif")
        writer.writerow([href_from(manifest, pairing.s2), s1, image, *columns])
    write_text_atomic(manifest, rows.getvalue())
    print(f"wrote {manifest}: {len(pairings)} scene{'s' if len(pairings) != 1 else ''} (remove-clouds --manifest)")
    if args.relative_orbit == [SAME_TRACK]:
        mean = sum(abs(pairing.days) for pairing in pairings) / len(pairings)
        print(
            f"--relative-orbit {SAME_TRACK}: relative orbit {pairings[0].track}, whose S1 serve every scene, "
            f"{mean:.1f} days from S2 on average"
        )
    report_tracks([pairing.track for pairing in pairings])
    return 0


def relative_orbits(values: list[str], *, same: bool = False) -> tuple[int, ...]:
    """``--relative-orbit``'s values as relative orbit numbers; anything else refused, naming the option (``same``:
    saying that the command also takes ``same``)."""
    from dsen2cr.errors import DSen2CRError

    for value in values:
        if not value.isdigit():
            also = ", or same alone" if same else ""
            raise DSen2CRError(f"--relative-orbit: relative orbit numbers (1 to 175){also}; got {value!r}")
    return tuple(int(value) for value in values)


def report_tracks(tracks: list[int | None]) -> None:
    """Say, where the S1 chosen lie on more than one relative orbit, how many scenes each got, and how to keep one
    (``--relative-orbit same``: each track sees the ground from its own angle, a series on one looks alike from date
    to date)."""
    known = [track for track in tracks if track is not None]
    if len(set(known)) < 2:
        return
    counts = sorted(((known.count(t), t) for t in set(known)), key=lambda c: (-c[0], c[1]))
    each = ", ".join(f"{track}: {count}" for count, track in counts)
    print(
        f"S1 chosen on {len(counts)} relative orbits (scenes each: {each}); each sees the ground from its own "
        f"angle: --relative-orbit same keeps the one that serves every scene, if one does"
    )


def checked_manifest(out: str, s2_inputs: list[str], s1_inputs: list[str], *, overwrite: bool) -> Path:
    """The manifest ``--out`` to write, refused before any work where it would replace one of the inputs or a file
    this command did not write (without ``overwrite``)."""
    from dsen2cr.inputs import local_inputs
    from dsen2cr.inputs.pairing import s1_items
    from dsen2cr.outputs.files import check_distinct_outputs, check_output_file

    manifest = Path(out)
    inputs = [found for s2 in s2_inputs for found in local_inputs(s2, None)]  # the manifest replaces none of them
    # (an S1 item's assets: read from it)
    inputs += [found for s1 in s1_items(s1_inputs) for found in local_inputs(s2_inputs[0], s1) if found[0] == "s1"]
    check_distinct_outputs([("out", manifest)], inputs)
    check_output_file(manifest, overwrite=overwrite, kind="text")
    return manifest
