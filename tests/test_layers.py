"""The package's layers (README, "Layout"): every import runs down or within a layer, and no
modules import each other in a circle.

Reads every `.py` file of `mscan_jax/` and `experiments/` with `ast` (nothing is imported), counts
every `import` node, function-local ones included, resolves relative imports, and fails naming
the importing file, its line and the imported module on an import that runs up a layer, and
naming the modules of any cycle (a strongly connected component of more than one module). A
package `__init__` counts as its own module: `from mscan_jax.models import inputs` imports
`mscan_jax.models.inputs`, `from mscan_jax import models` the registry in `models/__init__.py`.
"""

from __future__ import annotations

import ast
import os
import pathlib
from typing import Iterable

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("mscan_jax", "experiments")

# The layers, bottom to top: a module may import its own layer and the layers below. A module
# belongs to the longest entry that is it or a package above it. The README's "Layout" mirrors
# this table, one line per layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mscan_jax.errors", "mscan_jax.evaluation"),   # 0: imports nothing of the project
    ("mscan_jax.data",),                              # 1
    ("mscan_jax.models",),                            # 2
    ("mscan_jax.config",),                            # 3
    ("mscan_jax.training",),                          # 4
    ("experiments",),                                 # 5
    ("launch", "prepare", "benchmarks"),              # 6: the scripts at the repository's root
)

Import = tuple[str, int, str]   # (importing file, line, imported module)


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def find_modules(root: pathlib.Path, packages: Iterable[str] = SCANNED) -> dict[str, pathlib.Path]:
  """{module name: file} of every .py file under the given top-level packages of `root`."""
  return {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def project_roots(layers=LAYERS) -> set[str]:
  return {entry.split(".")[0] for layer in layers for entry in layer}


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path],
               roots: set[str]) -> list[tuple[int, str]]:
  """(line, imported project module) for every import node of the file, in any scope."""
  out = []
  is_package = path.name == "__init__.py"
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ""
      # `from package import module` imports the module; `from module import name` the module.
      targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                 for a in node.names]
    else:
      continue
    out += [(node.lineno, t) for t in dict.fromkeys(targets) if t.split(".")[0] in roots]
  return out


def import_graph(root: pathlib.Path, layers=LAYERS,
                 packages: Iterable[str] = SCANNED) -> dict[str, list[Import]]:
  """{module: [(file, line, imported module), ...]} of the project imports of every module."""
  modules = find_modules(root, packages)
  roots = project_roots(layers)
  return {name: [(os.path.relpath(path, root), line, target)
                 for line, target in imports_of(name, path, modules, roots)]
          for name, path in modules.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
  best, layer = "", None
  for i, entries in enumerate(layers):
    for entry in entries:
      if (module == entry or module.startswith(entry + ".")) and len(entry) > len(best):
        best, layer = entry, i
  return layer


def layer_errors(graph: dict[str, list[Import]], layers=LAYERS) -> list[str]:
  """One message per import that runs up a layer, or that involves a module with no layer."""
  errors = []
  for module, imports in sorted(graph.items()):
    for path, line, target in imports:
      here, there = layer_of(module, layers), layer_of(target, layers)
      if here is None or there is None:
        missing = module if here is None else target
        errors.append(f"{path}:{line}: {module} imports {target}, but {missing} has no layer "
                      "(add it to tests/test_layers.py's LAYERS and the README's Layout)")
      elif there > here:
        errors.append(f"{path}:{line}: {module} (layer {here}) imports {target} (layer {there}): "
                      "an import may only run down or within a layer")
  return errors


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan), each sorted."""
  edges = {m: sorted({t for _, _, t in imports if t in graph}) for m, imports in graph.items()}
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
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
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return sorted(found)


def cycle_errors(graph: dict[str, list[Import]]) -> list[str]:
  """One message per cycle, naming its modules and the imports that close it."""
  errors = []
  for component in cycles(graph):
    members = set(component)
    where = [f"{path}:{line} -> {t}" for m in component for path, line, t in graph[m]
             if t in members]
    errors.append(f"import cycle between {', '.join(component)}: {'; '.join(where)}")
  return errors


# ---------------------------------------------------------------------------------------
# The project


def test_every_import_runs_down_or_within_a_layer():
  errors = layer_errors(import_graph(ROOT))
  assert not errors, "\n".join(errors)


def test_no_import_cycles():
  errors = cycle_errors(import_graph(ROOT))
  assert not errors, "\n".join(errors)


def test_every_module_has_a_layer():
  """Each scanned module (not only those that import something) sits in a layer; the packages'
  root `__init__`s, which import nothing, are exempt."""
  graph = import_graph(ROOT)
  assert "mscan_jax.training.train" in graph and "experiments.report.mechanisms" in graph
  missing = [m for m in graph if layer_of(m) is None and m not in SCANNED]
  assert not missing, missing


def test_the_readme_lists_the_layers():
  """The README's Layout gives one line per layer, naming its modules in the table's order."""
  text = (ROOT / "README.md").read_text()
  section = text[text.index("## Layout"):]
  lines = [line for line in section.splitlines() if line.startswith("- layer ")]
  assert len(lines) == len(LAYERS), lines
  for i, (line, entries) in enumerate(zip(lines, LAYERS)):
    assert line.startswith(f"- layer {i}: "), line
    for entry in entries:
      assert f"`{entry}`" in line, (entry, line)


# ---------------------------------------------------------------------------------------
# The checks can fail


def _tree(root: pathlib.Path, files: dict[str, str]) -> None:
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_an_upward_import_is_reported_with_its_file_and_line(tmp_path):
  _tree(tmp_path, {
      "mscan_jax/__init__.py": "",
      "mscan_jax/data/__init__.py": "",
      "mscan_jax/data/loader.py": "import os\n\n\ndef f():\n  from mscan_jax import config\n",
      "mscan_jax/config.py": "from mscan_jax.data import loader\n",
      "mscan_jax/training/__init__.py": "",
      "mscan_jax/training/run.py": "from ..data import loader\nfrom mscan_jax.config import X\n",
      "mscan_jax/surprise.py": "from mscan_jax.data import loader\n",
  })
  graph = import_graph(tmp_path)
  assert graph["mscan_jax.training.run"] == [
      ("mscan_jax/training/run.py", 1, "mscan_jax.data.loader"),     # relative, resolved
      ("mscan_jax/training/run.py", 2, "mscan_jax.config")]
  errors = layer_errors(graph)
  assert errors == [
      "mscan_jax/data/loader.py:5: mscan_jax.data.loader (layer 1) imports mscan_jax.config "
      "(layer 3): an import may only run down or within a layer",
      "mscan_jax/surprise.py:1: mscan_jax.surprise imports mscan_jax.data.loader, but "
      "mscan_jax.surprise has no layer (add it to tests/test_layers.py's LAYERS and the "
      "README's Layout)"]


def test_a_cycle_is_reported_with_its_modules(tmp_path):
  _tree(tmp_path, {
      "mscan_jax/models/__init__.py": "from mscan_jax.models import a, b\n",
      "mscan_jax/models/a.py": "from mscan_jax.models import b\n",
      "mscan_jax/models/b.py": "def f():\n  from mscan_jax.models import helper\n",
      "mscan_jax/models/c.py": "from mscan_jax.models import a\n",     # into the cycle only
  })
  graph = import_graph(tmp_path)
  assert cycles(graph) == [["mscan_jax.models", "mscan_jax.models.a", "mscan_jax.models.b"]]
  (message,) = cycle_errors(graph)
  assert message.startswith("import cycle between mscan_jax.models, mscan_jax.models.a, "
                            "mscan_jax.models.b: ")
  assert "mscan_jax/models/b.py:2 -> mscan_jax.models" in message
  assert not layer_errors(graph)                   # one layer: only the cycle is wrong
