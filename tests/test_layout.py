"""The layering of ``src/xprune``, checked by reading the imports (an AST walk), so it stays true.

Laws (docs/architecture.md):
1. no import circle among the modules, counting the imports made when a module is loaded;
2. the LRP engine (``xprune.lrp``) imports nothing from the model zoo, transformers, criteria or data;
3. the core (units and kinds, gates, scores, plan, select, surgery, costs, measure) imports nothing, even
   inside a function, from the layers above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import xprune

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "xprune"

CORE = (
    "xprune.units",
    "xprune.kinds",
    "xprune.gates",
    "xprune.scores",
    "xprune.plan",
    "xprune.select",
    "xprune.surgery",
    "xprune.costs",
    "xprune.measure",
)
ABOVE_CORE = (
    "xprune.schedules",
    "xprune.tune",
    "xprune.guarantee",
    "xprune.steered",
    "xprune.transformers",
    "xprune.llm",
    "xprune.bench",
    "xprune.demo",
    "xprune.report",
    "xprune.cli",
    "xprune.pipeline",
    "xprune.control",
)
NOT_FROM_LRP = ("xprune.models", "xprune.transformers", "xprune.criteria", "xprune.data")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The xprune modules an import statement loads (a package's ``__init__`` only when names come from it)."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "xprune":
                targets.append(alias.name)
        return [t for t in targets if t in MODULES]
    base = module if _is_package(module) else module.rpartition(".")[0]
    if node.level:
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    if source.split(".")[0] != "xprune":
        return []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in MODULES:
            targets.append(sub)  # `from pkg import submodule`
        elif source in MODULES:
            targets.append(source)
    return targets


def _imports(module: str, *, in_functions: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(node, inside_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # for type checkers only, never executed
            nested = inside_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and (in_functions or not inside_function):
                found.update(t for t in _resolve(module, child) if t != module)
            visit(child, nested)

    visit(tree, False)
    return found


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_walk_reads_the_imports():
    # guards the test itself: a known import of each form is seen
    assert "xprune.units" in _imports("xprune.surgery", in_functions=False)
    assert "xprune.lrp.core" in _imports("xprune.lrp", in_functions=False)
    assert "xprune.distributed" in _imports("xprune.scores", in_functions=True)


def test_no_import_circle():
    graph = {m: _imports(m, in_functions=False) for m in MODULES}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v):  # Tarjan
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for m in graph:
        if m not in index:
            strongconnect(m)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _under(m, ("xprune.lrp",))))
def test_lrp_engine_is_a_leaf(module):
    bad = sorted(t for t in _imports(module, in_functions=True) if _under(t, NOT_FROM_LRP))
    assert not bad, f"{module} imports {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _under(m, CORE)))
def test_core_imports_nothing_above_it(module):
    bad = sorted(t for t in _imports(module, in_functions=True) if _under(t, ABOVE_CORE))
    assert not bad, f"{module} imports {bad}"


def test_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these by job: {long}"


class _LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 6, batch_first=True)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def test_a_new_kind_is_one_call():
    """The sketch of docs/unit-kinds.md runs as written, and "taylor" on it is the hand formula."""
    doc = (PACKAGE.parents[1] / "docs" / "unit-kinds.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    torch.manual_seed(0)
    model, X = _LSTMNet().eval(), torch.randn(10, 5, 3)
    y = model(X).argmax(-1)
    ns = {"model": model, "X": X, "y": y}
    try:
        exec(compile(code, "docs/unit-kinds.md", "exec"), ns)
    finally:
        xprune.units._KINDS.pop("lstm-outputs", None)
    h = model.lstm(X)[0][:, -1].detach().requires_grad_(True)
    out = model.head(h)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, y, reduction="sum"), h)
    taylor = (h * g).abs().mean(0).detach()  # Molchanov et al.: per-sample |a * dLoss/da|, averaged
    torch.testing.assert_close(
        ns["scores"]["head"].float(), taylor / taylor.norm(), rtol=1e-4, atol=1e-6
    )  # l2 per layer
    gone = ns["masked"]._xprune_history[-1]["plan"]["remove"]["head"]
    assert len(gone) == 1  # 25% of 6 hidden units, rounded down
    kept = h.detach().clone()
    kept[:, gone] = 0
    torch.testing.assert_close(ns["masked"](X), model.head(kept))


def test_import_xprune_loads_no_optional_package():
    import subprocess
    import sys

    code = (
        "import sys, xprune; print(sorted(m for m in ('optuna', 'transformers', 'matplotlib', 'sklearn', "
        "'mlxtend', 'rich', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
