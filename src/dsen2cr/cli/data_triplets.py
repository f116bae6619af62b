"""``dsen2cr data triplets``: training triplets chosen from a collection of scenes (a cloudy S2 scene, a clear one of
its grid sensed near it, S1), written as a ``data patches --manifest``."""

from __future__ import annotations

import argparse
import csv
import io

from dsen2cr.cli.options import SubParsers, add_command, finite_float
from dsen2cr.cli.pair import add_collection, add_s1_choice, checked_manifest, relative_orbits


def register(data_commands: SubParsers) -> None:
    """Add ``data triplets``."""
    parser = add_command(
        data_commands,
        "triplets",
        help="choose training triplets from your scenes (cloudy S2, a clear S2 of its tile, S1): a patches manifest",
        description="Of the S2 scenes given, each cloudy one (--cloudy) with the clear one (--clear) of its grid and "
        "level nearest to it in time (within --max-days) and the S1 nearest in time to that target (--s1-near), "
        "each holding data under --min-cover of the scene; written as a data patches manifest "
        "(s2_cloudy,s2,s1,roi, paths relative to it), a ROI a row. Cloud cover is estimated by the paper's detector "
        "on each scene read at most 512 px a side.",
    )
    add_collection(parser, "pairs.csv")
    parser.add_argument(
        "--cloudy",
        type=finite_float,
        metavar="SHARE",
        default=0.1,
        help="a scene at least SHARE of it cloud is an input (default: %(default)s)",
    )
    parser.add_argument(
        "--clear",
        type=finite_float,
        metavar="SHARE",
        default=0.05,
        help="a scene at most SHARE of it cloud is a target; data patches' --max-target-cloud still checks each "
        "patch (default: %(default)s)",
    )
    parser.add_argument(
        "--max-days",
        type=finite_float,
        metavar="DAYS",
        default=30.0,
        help="the most days between an input and its target (default: %(default)s)",
    )
    parser.add_argument(
        "--min-cover",
        type=finite_float,
        metavar="SHARE",
        default=0.95,
        help="the share of an input's valid pixels its target, and S1, must hold data under (default: %(default)s)",
    )
    parser.add_argument(
        "--s1-near",
        choices=["target", "input"],
        default="target",
        help="choose S1 nearest in time to the target (S1 then shows the ground the target shows, as at inference "
        "it shows the ground under the input's clouds) or to the input (default: %(default)s)",
    )
    parser.add_argument("--first-roi", type=int, default=1, help="the first row's ROI number (default: %(default)s)")
    add_s1_choice(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``data triplets``: check the manifest's place, choose, print a line a triplet and one a scene left out,
    write the manifest."""
    import logging

    from dsen2cr.data.triplets import TripletRules, choose_triplets, grid_groups
    from dsen2cr.inputs import map_s1_files
    from dsen2cr.inputs.s1_time import GAP_WARNING_DAYS, gap_text, pass_text
    from dsen2cr.outputs.files import write_text_atomic
    from dsen2cr.outputs.hrefs import href_from

    manifest = checked_manifest(args.out, args.s2, args.s1, overwrite=args.overwrite)
    rules = TripletRules(
        max_target_cloud=args.clear,
        min_input_cloud=args.cloudy,
        max_days=args.max_days,
        min_cover=args.min_cover,
        s1_near=args.s1_near,
        s1_max_days=args.s1_max_days,
        orbit=args.orbit,
        tracks=relative_orbits(args.relative_orbit),
    )
    choice = choose_triplets(args.s2, args.s1, rules, s2_offset=args.s2_offset, first_roi=args.first_roi)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    offsets = ["s2_cloudy_offset", "s2_offset"] if args.s2_offset is not None else []
    writer.writerow(["s2_cloudy", "s2", "s1", "roi", *offsets])
    log = logging.getLogger(__name__)
    for triplet in choice.triplets:
        near = "the target" if args.s1_near == "target" else "the input"
        on_pass = pass_text(triplet.s1_orbit, triplet.s1_track)
        print(
            f"ROI {triplet.roi}: input {triplet.s2_cloudy.text} ({triplet.s2_cloudy.cloud:.0%} cloud), target "
            f"{triplet.s2.text} ({triplet.s2.cloud:.0%} cloud, {gap_text(triplet.target_days, 'the input')}), S1 "
            f"{triplet.s1} ({gap_text(triplet.s1_days, near)}{on_pass}); all three hold data under "
            f"{triplet.cover:.0%} of the input"
        )
        if abs(triplet.s1_days) > GAP_WARNING_DAYS:
            log.warning("ROI %d: its S1 was sensed %s", triplet.roi, gap_text(triplet.s1_days, near))
        s1 = map_s1_files(triplet.s1, lambda part: href_from(manifest, part))
        scenes = [href_from(manifest, triplet.s2_cloudy.text), href_from(manifest, triplet.s2.text)]
        writer.writerow([*scenes, s1, triplet.roi, *[args.s2_offset] * len(offsets)])
    for reason in choice.left_out:
        print(f"left out {reason}")
    for scene in choice.neither:
        print(
            f"{scene.text}: {scene.cloud:.0%} cloud: neither an input (--cloudy {args.cloudy:g}) nor a target "
            f"(--clear {args.clear:g})"
        )
    write_text_atomic(manifest, rows.getvalue())
    count = len(choice.triplets)
    print(f"wrote {manifest}: {count} triplet{'s' if count != 1 else ''} (data patches --manifest {manifest})")
    for rois in grid_groups(choice.triplets):
        if len(rois) > 1:
            print(
                f"ROIs {', '.join(map(str, rois))} lie on one grid (the same ground): give them one split in data "
                "index, or a model is scored on ground it trained on"
            )
    return 0
