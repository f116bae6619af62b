"""``dsen2cr compare``: two evaluation reports of one test set, patch by patch."""

from __future__ import annotations

import argparse
import dataclasses

from dsen2cr.cli.options import SubParsers, add_command


def register(subparsers: SubParsers) -> None:
    """Add ``compare``."""
    parser = add_command(
        subparsers,
        "compare",
        help="two evaluation reports of one test set, patch by patch: is B better than A, and by how much",
        description="For every metric both reports hold: the two means, the mean of the per-patch difference B - A "
        "and its 95%% confidence interval with the patches of one ROI as one cluster, its p-value, and which model is "
        "better where that p, Holm-adjusted over the metrics judged, is below 0.05. Both must score the same patches "
        "in one protocol and window.",
    )
    parser.add_argument("a", metavar="A", help="an evaluate --out folder (e.g. of the published weights)")
    parser.add_argument("b", metavar="B", help="another one, of the same patches (e.g. of your fine-tuned weights)")
    parser.add_argument(
        "--metric",
        nargs="+",
        help="judge only these metrics, chosen before comparing (their p adjusted among them alone; the others shown, "
        "not judged) (default: every metric with a better side)",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON instead of Markdown")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run ``compare``."""
    from dsen2cr.compare import compare_reports, comparison_markdown, computed_in, read_report, report_warnings
    from dsen2cr.summary import json_text

    a, b = read_report(args.a), read_report(args.b)
    comparisons = compare_reports(a, b, judged=args.metric)
    if args.json:  # strict JSON: an interval there is none of (fewer than two ROIs) is null, not NaN
        rows = [dataclasses.asdict(comparison) for comparison in comparisons]
        said: dict[str, object] = {"a": str(a.folder), "b": str(b.folder), "warnings": report_warnings(a, b)}
        said |= {"computed_in": {"a": computed_in(a), "b": computed_in(b)}, "metrics": rows}
        print(json_text(said), end="")
    else:
        print(comparison_markdown(a, b, comparisons), end="")
    return 0
