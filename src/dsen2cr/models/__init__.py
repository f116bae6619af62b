"""The model registry, in the manner of timm (docs/design.md §3.9): one table of model families and their
variants, each variant with its published weights where they exist.

A family lives in its own module here (:mod:`dsen2cr.models.dsen2cr`) and is registered by one line in
``FAMILIES`` below; the rest of the package finds networks, their configurations, Keras importers and fused
inference forms through :func:`family_of` and :func:`get_variant`, never by a family's layer names.
"""

from __future__ import annotations

from dsen2cr.errors import DSen2CRError
from dsen2cr.models import dsen2cr as dsen2cr_family
from dsen2cr.models.registry import CloudRemovalNetwork, ModelFamily, ModelSpec, ModelVariant, PublishedWeights

#: Every family, by name. Adding one: its module, one entry here, its tests (docs/design.md §3.9).
FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (dsen2cr_family.FAMILY,)}
#: Every variant of every family, by name.
VARIANTS: dict[str, ModelVariant] = {v.name: v for family in FAMILIES.values() for v in family.variants}
#: The family of weights files that do not say (every file written before the registry): DSen2-CR.
DEFAULT_FAMILY = "dsen2cr"


def get_variant(name: str) -> ModelVariant:
    """The variant named ``name`` (a one-line error listing the names otherwise)."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise DSen2CRError(f"unknown model variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


def create_model(name: str = "dsen2cr") -> CloudRemovalNetwork:
    """Build a freshly initialised model by variant name (``dsen2cr models`` lists them)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; choose one of {sorted(VARIANTS)}")
    return VARIANTS[name].config.build()


def get_family(name: str, where: str = "model family") -> ModelFamily:
    """The family named ``name`` (``where`` names the file that asked, in the one-line error)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise DSen2CRError(
            f"{where}: unknown model family {name!r}; this dsen2cr knows {', '.join(FAMILIES)}"
        ) from None


def family_of(config: ModelSpec) -> ModelFamily:
    """The family whose configuration type ``config`` is."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_type):
            return family
    raise DSen2CRError(f"{type(config).__name__}: not the configuration of a registered model family")


def published_weights(name: str) -> tuple[ModelVariant, PublishedWeights]:
    """The variant and the published weights ``dsen2cr weights download NAME`` fetches."""
    for variant in VARIANTS.values():
        for published in variant.published:
            if published.name == name:
                return variant, published
    names = [p.name for v in VARIANTS.values() for p in v.published]
    raise DSen2CRError(f"weights: unknown published model {name!r}; choose one of {', '.join(names)}")


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "VARIANTS",
    "CloudRemovalNetwork",
    "ModelFamily",
    "ModelSpec",
    "ModelVariant",
    "PublishedWeights",
    "create_model",
    "family_of",
    "get_family",
    "get_variant",
    "published_weights",
]
