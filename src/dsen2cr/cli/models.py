"""``dsen2cr models``: the model registry: every variant of every family, its size, whether it takes SAR, and
its published weights with their source."""

from __future__ import annotations

import argparse

from dsen2cr.cli.options import SubParsers, add_command


def register(subparsers: SubParsers) -> None:
    """Add ``models``."""
    parser = add_command(
        subparsers,
        "models",
        help="list the model variants (name, family, parameters, SAR input, published weights)",
        description="The model registry: each variant's family, parameter count, whether it takes S1, and the "
        "published weights `dsen2cr weights download NAME` fetches for it, with their source.",
    )
    parser.set_defaults(handler=run)


def model_table() -> list[dict[str, str]]:
    """One row per variant: name, family, parameters, SAR, published weights (``name (loss)``), source."""
    from dsen2cr.models import VARIANTS

    rows = []
    for variant in VARIANTS.values():
        published = ", ".join(f"{p.name} ({p.loss})" for p in variant.published) or "-"
        sources = sorted({p.source for p in variant.published})
        rows.append(
            {
                "name": variant.name,
                "family": variant.family,
                "parameters": f"{variant.config.build_parameter_count():,}",
                "SAR": "yes" if variant.config.include_sar else "no",
                "published weights": published,
                "source": "; ".join(sources) or "-",
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """Print the registry as an aligned table."""
    rows = model_table()
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns[:-1]}
    print("  ".join(c.ljust(widths[c]) for c in columns[:-1]) + "  " + columns[-1])
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns[:-1]) + "  " + row[columns[-1]])
    return 0
