"""Every import path, parameter name and version range of an engine lives in its fact table.

Checked over the syntax tree of every module of the package (docstrings aside):

* no string names an engine module (``vllm.…``, ``sglang.…``) and no statement imports one,
  outside the fact tables (``FACTS`` and the module-level path constants they are built from, and
  ``engines/_specs.py``); the adapters never use those path constants either;
* no string holds a version range (``>=0.11``, ``<0.5.3.post1``) outside the fact tables;
* the adapters never probe a signature themselves (``"x" in params``, ``inspect.signature``,
  ``.parameters``): parameters come from ``engine.params``/``engine.requires``, i.e. from facts;
* they never pass an engine callable a keyword by its literal name;
* every fact key an adapter asks for exists.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from moecompat.engines import ENGINES

PKG = pathlib.Path(__file__).resolve().parents[2] / "moecompat"
ENGINE_MODULES = {name: PKG / "engines" / f"{name}.py" for name in ENGINES}
SPECS = PKG / "engines" / "_specs.py"
MACHINERY = {PKG / "engines" / "base.py", PKG / "_adapters.py"}
ENGINE_PATH = re.compile(r"\b(?:vllm|sglang|sgl_kernel)\.[A-Za-z_]")
VERSION_RANGE = re.compile(r"(?:[<>]=?|[=!~]=)\s*\d+\.\d+(?:\.\d+)*(?:\.?post\d+)?(?![\w.])")
FACT_METHODS = {"find", "need", "requires", "holds", "range", "fact", "load_fact", "available_in", "symbol_facts", "has_symbol"}


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _fact_table_nodes(tree: ast.Module) -> tuple[set[int], set[str]]:
    """Node ids inside the fact table (``FACTS = ...``, the ``_params`` helper and the module-level
    string constants) of an engine module, and the names of those path constants."""
    inside: set[int] = set()
    constants: set[str] = set()
    for stmt in tree.body:
        targets = []
        if isinstance(stmt, ast.Assign):
            targets = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            targets = [stmt.target.id]
        elif isinstance(stmt, ast.FunctionDef) and stmt.name == "_params":
            inside |= {id(n) for n in ast.walk(stmt)}
            continue
        else:
            continue
        value = stmt.value
        if value is None:
            continue
        is_path = (isinstance(value, (ast.Constant, ast.JoinedStr)) and bool(targets) and targets[0].isupper()
                   and any(ENGINE_PATH.search(v) or (isinstance(n, ast.FormattedValue)) for n, v in _strings(value) + [(n, "") for n in ast.walk(value)]))
        if "FACTS" in targets or is_path:
            inside |= {id(n) for n in ast.walk(stmt)}
            if is_path:
                constants |= set(targets)
    return inside, constants


def _strings(node: ast.AST) -> list[tuple[ast.AST, str]]:
    """String constants (and the literal parts of f-strings) under ``node``."""
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.append((n, n.value))
    return out


def _format_specs(tree: ast.AST) -> set[int]:
    return {id(n) for fv in ast.walk(tree) if isinstance(fv, ast.FormattedValue) and fv.format_spec is not None
            for n in ast.walk(fv.format_spec)}


def _violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docs = _docstring_nodes(tree) | _format_specs(tree)
    is_engine = path in ENGINE_MODULES.values()
    table, constants = _fact_table_nodes(tree) if is_engine else (set(), set())
    if path == SPECS:
        return []
    rel = path.relative_to(PKG.parent)
    out = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        if id(node) in table or id(node) in docs:
            continue
        if isinstance(node, ast.Import) or (isinstance(node, ast.ImportFrom) and node.level == 0):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in ("vllm", "sglang", "sgl_kernel") for n in names):
                out.append(f"{rel}:{line}: imports an engine module directly")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if ENGINE_PATH.search(node.value):
                out.append(f"{rel}:{line}: engine path {node.value!r} outside the fact table")
            if VERSION_RANGE.search(node.value):
                out.append(f"{rel}:{line}: version range {node.value!r} outside the fact table")
        if is_engine and isinstance(node, ast.Name) and node.id in constants and isinstance(node.ctx, ast.Load):
            out.append(f"{rel}:{line}: adapter code uses the path constant {node.id}")
    return out


def _probe_violations(path: pathlib.Path) -> list[str]:
    """Signature probing and literal engine keywords in an engine module's adapter code."""
    tree = ast.parse(path.read_text())
    table, _ = _fact_table_nodes(tree)
    rel = path.relative_to(PKG.parent)
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or id(fn) in table:
            continue
        # Names bound to engine objects in this function: `fact, fn = engine.find(...)`, etc.
        engine_objects: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute) \
                    and node.value.func.attr in ("find", "need", "load_fact", "requires"):
                for t in node.targets:
                    elts = t.elts if isinstance(t, ast.Tuple) else [t]
                    engine_objects |= {e.id for e in elts if isinstance(e, ast.Name)}
        for node in ast.walk(fn):
            line = getattr(node, "lineno", "?")
            if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str) \
                    and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) and any(
                        "param" in ast.unparse(c).lower() or "sig" in ast.unparse(c).lower() or "field" in ast.unparse(c).lower()
                        for c in node.comparators):
                out.append(f"{rel}:{line}: probes {node.left.value!r} by membership (use engine.params / a fact)")
            if isinstance(node, ast.Attribute) and node.attr in ("parameters", "signature") and not (
                    isinstance(node.value, ast.Name) and node.value.id == "engine"):
                out.append(f"{rel}:{line}: inspects a signature itself (.{node.attr})")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in engine_objects:
                for kw in node.keywords:
                    if kw.arg is not None:
                        out.append(f"{rel}:{line}: passes {node.func.id}({kw.arg}=...) by a literal name (use engine.params)")
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_no_engine_path_or_range_outside_the_fact_tables(path):
    assert _violations(path) == []


@pytest.mark.parametrize("engine", sorted(ENGINE_MODULES))
def test_adapters_take_parameters_from_facts(engine):
    assert _probe_violations(ENGINE_MODULES[engine]) == []


#: The engine matrix's tests, whose expectations come from the same facts.
SURFACE_TESTS = {name: PKG.parent / "tests" / "engines" / f"test_{name}_surface.py" for name in ENGINES}


def _literal_ranges(module: pathlib.Path) -> list[str]:
    tree = ast.parse(module.read_text())
    docs = _docstring_nodes(tree)
    return [f"line {n.lineno}: {n.value!r}" for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in docs and VERSION_RANGE.search(n.value)]


def _unknown_fact_keys(engine: str, module: pathlib.Path) -> list[str]:
    """Literal names given to ``engine.find/holds/fact/...`` that are no fact key, symbol or
    parameter alias of ``engine`` (outside the fact table itself)."""
    tree = ast.parse(module.read_text())
    table, _ = _fact_table_nodes(tree) if module.parent.name == "engines" and module.parent.parent.name == "moecompat" \
        else (set(), set())
    facts = ENGINES[engine].facts
    known = {f.key for f in facts} | {f.symbol for f in facts} | {f.key.split("@", 1)[0] for f in facts}
    unknown = []
    for node in ast.walk(tree):
        if id(node) in table or not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr not in FACT_METHODS or not node.args:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value not in known:
            unknown.append(f"line {node.lineno}: {node.func.attr}({arg.value!r})")
    return unknown


@pytest.mark.parametrize("engine", sorted(SURFACE_TESTS))
def test_engine_tests_take_version_ranges_from_facts(engine):
    """The matrix tests ask the facts which releases have a feature; a literal range there would
    be a second, unchecked copy of a fact."""
    assert _literal_ranges(SURFACE_TESTS[engine]) == []


@pytest.mark.parametrize("path", [*ENGINE_MODULES.items(), *SURFACE_TESTS.items()],
                         ids=lambda p: str(p[1].relative_to(PKG.parent)))
def test_every_fact_key_an_adapter_or_test_names_exists(path):
    """A fact looked up by a key that does not exist fails only on the engine matrix (a
    ``KeyError`` there); this finds it with no engine installed."""
    assert _unknown_fact_keys(*path) == []


def test_the_fact_key_and_range_checks_find_what_they_look_for(tmp_path):
    bad = tmp_path / "test_vllm_surface.py"
    bad.write_text('def test_x(vllm_engine):\n'
                   '    """Since >=0.8 (a docstring may say so)."""\n'
                   '    if vllm_engine.holds("TopKConfig.scoring_func (sigmoid without a bias)"):\n'
                   '        assert version_in(vllm_engine, ">=0.5")\n')
    assert [u.split(":")[0] for u in _unknown_fact_keys("vllm", bad)] == ["line 3"]
    assert [r.split(":")[0] for r in _literal_ranges(bad)] == ["line 4"]


def test_the_checker_finds_what_it_looks_for(tmp_path):
    """The rules catch each kind of violation (so the tests above cannot pass vacuously)."""
    bad = tmp_path / "moecompat" / "engines" / "vllm.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        'FM = "vllm.model_executor.layers.fused_moe"\n'
        'FACTS = ()\n'
        'def _build(engine):\n'
        '    fact, fn = engine.find("fused_experts")\n'
        '    where = f"{FM}.layer"\n'
        '    if "expert_map" in params:\n'
        '        pass\n'
        '    fn(x, expert_map=None)\n'
        '    raise engine.unsupported("x", ">=0.8")\n'
        '    import vllm.envs\n')
    global PKG, ENGINE_MODULES  # point the checker at the synthetic module
    saved = PKG, ENGINE_MODULES
    PKG, ENGINE_MODULES = tmp_path / "moecompat", {"vllm": bad}
    try:
        found = "\n".join(_violations(bad) + _probe_violations(bad))
    finally:
        PKG, ENGINE_MODULES = saved
    for fragment in ("path constant FM", "version range", "imports an engine module", "by membership",
                     "fn(expert_map=...)"):
        assert fragment in found, found
