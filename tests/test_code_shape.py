"""The shape of the code that docs/design.md §1 promises: layers imported downward only, no import cycle (lazy
imports count), and functions and modules of a size a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dsen2cr"

#: The layers of docs/design.md §1, top to bottom: a module may import modules of its own layer or below.
LAYERS = [
    ["dsen2cr"],  # the package itself: the public names, some imported on first use
    ["cli"],
    ["demo", "doctor"],
    ["evaluate", "compare", "sigma_calibration"],
    ["evaluation_scoring"],  # an evaluation's patches scored and their images written, on threads
    ["evaluation_progress"],  # an evaluation's scored batches as they are scored (evaluate --resume)
    ["training"],
    ["scene.dry_run"],  # remove-clouds --dry-run: every scene checked as its run would, nothing written
    ["scene.jobs", "scene.arrays"],
    ["scene.done"],  # scenes an earlier run finished (--skip-existing)
    ["scene.remove", "scene.tile_writer", "scene.checks", "scene.sources"],
    ["ensemble"],
    ["scene.batches", "scene.masking", "scene.describe"],
    ["scene.stac_collection"],  # a STAC Collection of a batch's items
    ["scene.stac_item"],  # a STAC item describing a scene's outputs, read from them once they are in place
    ["scene.journal"],  # a scene's predicted windows, kept while it runs (remove-clouds --resume)
    ["scene.time_limit"],  # SLURM's warning before a job's time limit: the scene stops at a batch's end
    ["predictor"],
    ["auto"],
    ["scene.tiles", "scene"],
    ["settings"],
    ["weights_info"],
    ["ensemble_file"],  # an ensemble's members and its sigma scale, in a JSON file (--weights ensemble.json)
    ["onnx_export"],
    ["onnx_runtime"],
    ["backends"],
    ["compile_cache"],
    ["published"],
    ["weights"],
    ["sigma_record"],  # a sigma calibration's stored record: checked, and in words
    ["keras"],
    ["data.patch_jobs"],  # many scene pairs of a manifest, each cut by data.patches
    ["data.patches"],  # your own scenes cut into training patches: reads them as remove-clouds does
    ["data.patch_folders"],  # a ROI's folders: what a run may write there, an earlier run's patches kept
    ["data.triplets"],  # training triplets chosen from a collection of scenes, for data.patch_jobs' manifest
    ["inputs"],
    ["data"],
    ["config"],
    ["quicklook"],  # a scene's before/after picture, drawn with visualize's pieces
    ["visualize"],
    ["outputs.finisher"],
    ["rasters"],
    ["outputs"],
    ["models"],
    ["sigma_statistics"],  # a sigma calibration's statistics: the factors and intervals fitted from them
    ["preprocessing", "cloud_detection", "losses", "metrics", "calibration", "summary"],
    ["precision"],
    ["signed_urls"],
    ["errors", "version", "formats", "machine", "choices", "bounds", "bucket_access", "gdal_messages", "onednn"],
    ["said_warnings"],  # the warnings a command says while it runs, kept for its report
    ["launch"],
]
#: Lazy imports upward, each allowed for the reason its comment gives in the code (none today).
UPWARD_LAZY: set[tuple[str, str]] = set()
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 10
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    """Module name (relative to the package, ``dsen2cr`` for the package itself) -> file."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "dsen2cr"] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module of the package, whether the import is inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    lazy_nodes = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target != "dsen2cr" and not target.startswith("dsen2cr."):
                continue
            name = target.removeprefix("dsen2cr").removeprefix(".")
            while name and name not in modules:
                name = name.rpartition(".")[0]
            found.append((name or "dsen2cr", id(node) in lazy_nodes))
    return found


def _layer(module: str) -> int:
    """The index of the layer ``module`` belongs to (its longest listed prefix)."""
    best, index = -1, None
    for position, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, index = len(name), position
    assert index is not None, f"{module}: not in any layer of docs/design.md §1"
    return index


def test_every_import_goes_down_the_layers() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for target, lazy in _imports(path, modules):
            if target == name or _layer(target) >= _layer(name):
                continue
            if not (lazy and (name, target) in UPWARD_LAZY):
                wrong.append(f"{name} imports {target}{' (lazily)' if lazy else ''}")
    assert not wrong, wrong


def test_no_import_cycle() -> None:
    """Between modules of one layer too (lazy imports count): a cycle found by depth-first search."""
    modules = _modules()
    graph = {
        name: {t for t, _ in _imports(path, modules) if t != name and (name, t) not in UPWARD_LAZY}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*trail, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            assert (cycle := visit(start, [])) is None, " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_functions_and_modules_are_small(name: str) -> None:
    path = _modules()[name]
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{name}: {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        args = node.args
        count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
        count += (args.vararg is not None) + (args.kwarg is not None)
        count -= bool(args.args) and args.args[0].arg in ("self", "cls")
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {length} lines"
        assert count <= MAX_PARAMETERS, f"{name}.{node.name}: {count} parameters"
