"""Imports go one way (CLI -> runners -> pipeline -> components -> core), with no circles, and
heavy libraries are imported where they are used, so listing or compiling is instant. Read
from the source (every import, function-level ones included), not from what happens to run."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"components": "tlp.components", "pipelines": "tlp.pipelines"}
HEAVY = ("tensorflow", "tf_keras", "tensorflow_datasets", "mlflow", "google.cloud", "google_cloud_pipeline_components",
         "matplotlib", "sklearn", "kserve", "docker")
LAYERS = ("core", "components", "pipeline", "runners", "cli")


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def _layer(module: str) -> int:
    if module.startswith("tlp.components.lib"):
        return LAYERS.index("core")
    if module.startswith("tlp.components"):
        return LAYERS.index("components")
    if module == "tlp.pipelines.training":
        return LAYERS.index("pipeline")
    if module == "tlp.pipelines.cli":
        return LAYERS.index("cli")
    return LAYERS.index("runners")


def _imports(path: Path):
    """(imported module, line, at module top?) for every import statement in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in top


def _first_party_graph():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for imported, _line, _top in _imports(path):
            if imported in modules and imported != name:
                graph[name].add(imported)
    return graph


def test_no_first_party_import_circles():
    graph = _first_party_graph()
    visiting, done, circles = [], set(), []

    def visit(node):
        if node in visiting:
            circles.append(visiting[visiting.index(node):] + [node])
            return
        if node in done:
            return
        visiting.append(node)
        for target in sorted(graph[node]):
            visit(target)
        visiting.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_imports_go_one_way():
    wrong = [
        f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})"
        for module, targets in _first_party_graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not wrong, "imports against CLI -> runners -> pipeline -> components -> core:\n" + "\n".join(wrong)


def test_heavy_libraries_are_imported_where_used():
    at_top = [
        f"{path.relative_to(ROOT)}:{line} imports {name} at module level"
        for path in _modules().values()
        for name, line, top in _imports(path)
        if top and name.startswith(HEAVY)
    ]
    assert not at_top, "\n".join(at_top)


def test_first_party_imports_inside_functions_only_in_component_bodies():
    """kfp ships a component's function body alone, so its imports must be inside it; anywhere
    else a function-level first-party import would only hide a circle."""
    modules = _modules()
    hidden = [
        f"{path.relative_to(ROOT)}:{line} imports {name} inside a function"
        for module, path in modules.items()
        if _layer(module) != LAYERS.index("components")
        for name, line, top in _imports(path)
        if not top and name.startswith("tlp.")
    ]
    assert not hidden, "\n".join(hidden)


# The registry keeps the backends, promote and rollback; deciding what a new version is worth
# (evaluation, serving it once, the data) is the registration step's (components/lib/registration.py).
NOT_FOR_THE_REGISTRY = (
    "tlp.components.lib.evaluation", "tlp.components.lib.serving", "tlp.components.lib.infra_validation",
    "tlp.components.lib.training", "tlp.components.lib.dataprep", "tlp.components.lib.registration",
)


def test_the_registry_imports_no_step_logic():
    wrong = [
        f"{module} imports {target}"
        for module, targets in _first_party_graph().items()
        if module.startswith("tlp.components.lib.registry")
        for target in targets
        if target.startswith(NOT_FOR_THE_REGISTRY)
    ]
    assert not wrong, "\n".join(wrong)
    graph = _first_party_graph()
    assert "tlp.components.lib.registry.champion" in graph["tlp.components.lib.registration"], (
        "the check above looks at real edges: registration uses the registry's champion moves")
