"""The package layout: stage subpackages, old import paths kept as aliases, no import cycles."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MOVED = {
    "amazon_visual.pipeline": "amazon_visual.training.pipeline",
    "amazon_visual.plots": "amazon_visual.evaluation.plots",
    "amazon_visual.embeddings": "amazon_visual.retrieval.embeddings",
    "amazon_visual.index": "amazon_visual.retrieval.index",
    "amazon_visual.recommend": "amazon_visual.retrieval.recommend",
    "amazon_visual.retrieval_eval": "amazon_visual.retrieval.metrics",
    "amazon_visual.gallery": "amazon_visual.web.gallery",
    "amazon_visual.report": "amazon_visual.web.report",
}


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_module_paths_are_the_new_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


def test_readme_era_imports_still_work():
    from amazon_visual.gallery import write_gallery
    from amazon_visual.index import build_index, cosine_from_angular
    from amazon_visual.report import write_report
    from amazon_visual.retrieval_eval import evaluate_retrieval

    import amazon_visual
    from amazon_visual.training import load_run, train

    assert amazon_visual.build_index is build_index
    assert callable(write_gallery) and callable(write_report) and callable(evaluate_retrieval)
    assert callable(cosine_from_angular) and callable(load_run) and callable(train)


def test_import_amazon_visual_stays_light():
    code = (
        "import sys, amazon_visual, amazon_visual.training, amazon_visual.evaluation, amazon_visual.retrieval; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def _imports(path, pkg_roots=("amazon_visual", "tfrecords_builder")):
    tree = ast.parse(open(path, encoding="utf-8").read())
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in pkg_roots:
            deps.add(node.module)
            deps |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.split(".")[0] in pkg_roots}
    return deps


def test_no_import_cycles_between_modules():
    mods = {}
    for pkg in ("amazon_visual", "tfrecords_builder"):
        for root, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    p = os.path.join(root, f)
                    name = os.path.relpath(p, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                    mods[name] = _imports(p)
    graph = {
        a: {b for b in deps if b in mods and b != a and not a.startswith(b + ".") and not b.startswith(a + ".")}
        for a, deps in mods.items()
    }
    # depth-first search for a cycle
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m) :] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
