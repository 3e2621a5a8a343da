"""Properties of the code base itself: no import cycles among mnistlab's modules, and typed overrides."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mnistlab.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "mnistlab"


def _module_name(path: Path) -> str:
    """src/mnistlab/core/train.py -> "core.train"; src/mnistlab/cli.py -> "cli"."""
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the mnistlab modules it imports, anywhere in the file (type-checking blocks and imports
    inside functions included); relative imports resolved against the importing module's package."""
    paths = [p for p in SRC.rglob("*.py") if p.name != "__init__.py"]
    mods = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        package = _module_name(path).split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                if node.module:
                    target = ".".join(base + node.module.split("."))
                    deps |= {target} | {f"{target}.{a.name}" for a in node.names}
                else:
                    deps |= {".".join([*base, a.name]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistlab."):
                target = node.module.removeprefix("mnistlab.")
                deps |= {target} | {f"{target}.{a.name}" for a in node.names}
        graph[_module_name(path)] = deps & mods
    return graph


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*path[path.index(d) :], d])
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert graph["core.config"] == {"errors"}  # the config knows nothing of the modules that use it


# Which subpackage may import which: the layering the layout promises, stated once (README "Layout" and
# CONTRIBUTING.md say the same). errors and text are the top-level leaves; cli may import anything.
LAYERS = {
    "errors": set(),
    "text": set(),
    "core": {"errors", "text"},
    "studies": {"core", "errors", "text"},
    "analysis": {"core", "errors", "text"},
    "deploy": {"core", "errors", "text"},
    "output": {"core", "errors", "text"},
}
# The edges outside those layers, each named: module -> module, and why.
NAMED_EDGES = {
    ("core.experiment", "output.plots"): "a run draws its own figures when it ends",
    ("studies.compare", "output.plots"): "a comparison draws its overlay figure",
    ("studies.compare", "output.tracking"): "a comparison replays its runs into the trackers",
    ("studies.ray_executor", "output.tracking"): "Ray tasks report epochs to the trackers",
    ("analysis.activations", "output.plots"): "the activation studies' figures use the report's style",
    ("analysis.evaluate", "output.plots"): "evaluate's figures use the report's style",
    ("output.report", "analysis.activations"): "the report runs and reads the activation studies",
    ("output.report", "analysis.evaluate"): "the report reads evaluate's files",
    ("output.report", "analysis.gradcheck"): "the report runs the gradient check",
    ("output.report", "studies.compare"): "the report reads a comparison's files",
}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_subpackages_import_only_along_the_allowed_edges():
    """Every import from one subpackage into another is allowed by LAYERS or named in NAMED_EDGES; a new edge
    (say core importing studies) fails here until it is argued for and named. A named edge that no longer
    exists fails too, so the list stays the truth."""
    graph = _imports()
    found = {(m, d) for m, deps in graph.items() for d in deps if _layer(m) != _layer(d)}
    unexpected = sorted(
        (m, d)
        for m, d in found
        if _layer(m) not in ("cli", "__main__")
        and _layer(d) not in LAYERS.get(_layer(m), set())
        and (m, d) not in NAMED_EDGES
    )
    assert not unexpected, f"imports outside the allowed edges (tests/test_house.py LAYERS, NAMED_EDGES): {unexpected}"
    stale = sorted(set(NAMED_EDGES) - found)
    assert not stale, f"named edges that no longer exist: {stale}"
    assert {_layer(m) for m in graph} - {"cli", "__main__"} <= set(LAYERS), "a subpackage without a layer"
    docs = {name: (SRC.parents[1] / name).read_text() for name in ("README.md", "CONTRIBUTING.md")}
    for m, d in NAMED_EDGES:
        for name, text in docs.items():
            assert f"{m} -> {d}" in text, f"{name} does not name the edge {m} -> {d}"


def test_overrides_are_values_not_toml_text(small_mnist_dir, tmp_path):
    """A --data-dir whose name holds quotes (it used to be spliced into TOML) is taken as it is."""
    quoted = tmp_path / 'it\'s "mnist"'
    quoted.symlink_to(small_mnist_dir, target_is_directory=True)
    out = tmp_path / "run"
    assert (
        main(["train", "--data-dir", str(quoted), "--epochs", "1", "--hidden", "8", "--quiet", "--out", str(out)]) == 0
    )
    assert str(quoted) in (out / "config.toml").read_text().replace("\\\\", "\\").replace('\\"', '"')


def test_readme_layout_names_every_module():
    """The README's layout section lists every module under the subpackage it lives in (a module added
    without a word in the layout fails here)."""
    readme = (SRC.parents[1] / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[layout.index("```\n") + 4 :]
    layout = layout[: layout.index("```")]
    blocks: dict[str, str] = {}  # "core" -> the text of its lines; "" -> the top-level lines
    current = ""
    for line in layout.splitlines()[1:]:  # after "src/mnistlab/"
        if not line.startswith("  "):
            break  # experiments/, benchmarks/, ...: outside the package
        head = line.split()[0]
        if line[2] != " " and head.endswith("/") and head[:-1].isidentifier():
            current = head[:-1]
        elif line[2] != " ":
            current = ""
        blocks[current] = blocks.get(current, "") + line + "\n"
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        rel = path.relative_to(SRC)
        where = rel.parts[0] if len(rel.parts) > 1 else ""
        assert re.search(rf"(?<![\w/]){re.escape(path.name)}", blocks.get(where, "")), (
            f"README's layout does not list {rel} under {where or 'src/mnistlab'}/"
        )
    subpackages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert subpackages == {k for k, text in blocks.items() if k and ".py" in text}, (
        "README's layout and the subpackages differ"
    )


TRAINER_MODULES = (
    "mnistlab.core.train",
    "mnistlab.core.fused",
    "mnistlab.core.cudagraphs",
    "mnistlab.core.checkpoint",
    "mnistlab.core.experiment",
    "mnistlab.core.numpy_train",
)


def test_checking_a_config_or_a_space_imports_no_trainer():
    """Checking every committed config and loading every committed search space, in a fresh interpreter, leaves
    the trainer and its fast paths unimported (the check is cheap and cannot drift into training code)."""
    import subprocess
    import sys

    from conftest import committed_spaces

    root = SRC.parents[1]
    spaces = [(str(space), str(base)) for space, base in committed_spaces()]
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mnistlab.core import checks, config\n"
        "from mnistlab.studies.space import load_space\n"
        f"root = Path({str(root)!r})\n"
        "configs = sorted((root / 'experiments').glob('*.toml'))\n"
        "assert configs\n"
        "for path in configs:\n"
        "    checks.check(config.load(path))\n"
        f"for space, base in {spaces!r}:\n"
        "    assert load_space(Path(space), checks.load_config(base))\n"
        f"print(sorted(set({TRAINER_MODULES!r}) & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", f"imported: {out.strip()}"


def test_one_validating_way_to_change_a_config():
    """config has no set_values of its own: every change goes through checks.set_values, which checks what the
    registries support (an activation the models do not have is refused by name, not at training time)."""
    import pytest

    from mnistlab.core import checks, config
    from mnistlab.errors import ConfigError

    assert not hasattr(config, "set_values") and not hasattr(config, "apply_overrides")
    with pytest.raises(ConfigError, match=re.escape("'model.activation' = 'swish' is unknown")):
        checks.set_values(config.Config(), {"model.activation": "swish"})
    assert checks.parse_overrides(["model.hidden=[8, 8]", "data.dir=/tmp/x y", "train.epochs=2"]) == {
        "model.hidden": [8, 8],
        "data.dir": "/tmp/x y",
        "train.epochs": 2,
    }
