"""The package's layout holds: imports flow one way, modules stay small.

Imports are read from the source with ``ast`` (nothing is imported), every
``import`` anywhere in a module counts, including those inside functions: an
import moved into a function to dodge a circle is still a circle.
"""

import ast
import os

import pytest

from helpers import REPO

PACKAGE = os.path.join(REPO, "catdog")
MAX_LINES = 600

# Each module imports only from its own layer or the layers before it. A new
# module is placed here on purpose (the test fails for an unplaced one).
LAYERS = [
    ["catdog.options", "catdog.errors", "catdog.fileio", "catdog.decode", "catdog.demo",
     "catdog.tfdata"],                             # how every pipeline runs
    ["catdog.class_weighting", "catdog.control_settings", "catdog.label_sets"],
    ["catdog.config_checks"],                       # the values settings may take
    ["catdog.config"],
    ["catdog.rundir", "catdog.scan"],               # run-dir names; file checks
    ["catdog.batching", "catdog.image_paths", "catdog.data_service"],
    ["catdog.file_cache", "catdog.splits"],
    ["catdog.sources"],                             # folder, CSV, TFRecords, TFDS
    ["catdog.data"],                                # the public face of input
    ["catdog.augment", "catdog.backbones", "catdog.precision", "catdog.distribute",
     "catdog.controls"],                           # schedules, early stopping
    ["catdog.models", "catdog.callbacks", "catdog.keras_patches", "catdog.watchdog"],
    ["catdog.fit_wrappers", "catdog.resume_check", "catdog.fine_tuning", "catdog.figures"],
    ["catdog.fast_features"],
    ["catdog.train"],                               # one stage
    ["catdog.stages", "catdog.model_io", "catdog.lr_finder"],  # + the rate range test
    ["catdog.predict", "catdog.export", "catdog.evaluate", "catdog.evaluate_sets"],
    ["catdog.cli"],
]


def _modules():
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(module, path, modules):
    """The catdog modules ``module`` imports (submodule names resolved)."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # ``from catdog.scan import check`` imports the submodule; a
            # name defined in the package's face is an import of the face.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name not in (module, "catdog"):
                targets.add(name)
    return targets


def _layer_of(module):
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if module == entry or module.startswith(entry + "."):
                return i
    return None


MODULES = _modules()
GRAPH = {m: _imports(m, p, MODULES) for m, p in MODULES.items()}


def test_every_module_is_placed_in_a_layer():
    unplaced = sorted(m for m in MODULES if m != "catdog" and _layer_of(m) is None)
    assert not unplaced, f"place these modules in LAYERS: {unplaced}"


def test_imports_only_go_to_the_same_or_an_earlier_layer():
    upward = sorted(
        f"{m} (layer {_layer_of(m)}) imports {t} (layer {_layer_of(t)})"
        for m, targets in GRAPH.items() if m != "catdog"
        for t in targets if _layer_of(t) is not None and _layer_of(t) > _layer_of(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_cycle_detection_sees_imports_inside_functions(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from catdog import b\n")
    assert _imports("catdog.a", str(a), {"catdog", "catdog.a", "catdog.b"}) == {"catdog.b"}


def test_a_submodule_importing_its_package_face_is_an_edge(tmp_path):
    check = tmp_path / "check.py"
    check.write_text("from catdog.scan import cache\nfrom catdog.scan import walk_image_files\n")
    modules = {"catdog", "catdog.scan", "catdog.scan.check", "catdog.scan.cache"}
    assert _imports("catdog.scan.check", str(check), modules) == {
        "catdog.scan.cache", "catdog.scan"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short_enough_to_read(module):
    with open(MODULES[module], encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_LINES, f"{MODULES[module]}: {lines} lines; split it by job"


def test_the_benchmark_is_not_part_of_the_package():
    assert not any(m.split(".")[-1].startswith("benchmark") for m in MODULES)
    assert os.path.isfile(os.path.join(REPO, "benchmarks", "__main__.py"))
