"""The package's structure: no import circles, lower layers never import higher ones, and the
public surface is pinned."""

from __future__ import annotations

import ast
import pathlib

import pytest

import moecompat as mc

PKG = pathlib.Path(mc.__file__).resolve().parent

#: The layers, lowest first; a module may import only from its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_version", "_metadata", "_scalars", "_mpl", "_workers"),
    ("vocab", "mx", "engines._specs"),
    ("quant", "int4", "_adapters", "reference.numerics"),
    ("_calls", "_checks"),
    ("reference", "engines"),
    ("_backends",),
    ("api", "mxfp4", "ep", "tuning", "info", "tracker", "loader", "plot"),
    ("ops",),
    ("experts", "bench", "tune"),
    ("cli", "wheelhouse", "__init__", "__main__"),
]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """moecompat modules ``path`` imports anywhere (module level or inside functions)."""
    name = _module_name(path)
    package = name.rsplit(".", 1)[0] if "." in name and path.name != "__init__.py" else (name if path.name == "__init__.py" and name != "__init__" else "")
    out: set[str] = set()
    modules = {_module_name(p) for p in PKG.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
            elif (node.module or "").startswith("moecompat"):
                target = node.module.removeprefix("moecompat").lstrip(".")  # type: ignore[union-attr]
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("moecompat."):
                    out.add(alias.name.removeprefix("moecompat."))
    out.discard(name)
    return {m for m in out if m in modules and m != ""}


GRAPH = {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _layer(module: str) -> int:
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or module.startswith(n + "."):
                return i
    raise AssertionError(f"module {module} is in no layer of tests/unit/test_structure.py")


def test_every_module_has_a_layer():
    for module in GRAPH:
        _layer(module)


def test_no_import_circles():
    """Tarjan's strongly connected components of the import graph are all single modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
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

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert circles == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_lower_layers_never_import_higher_ones(module):
    up = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module))
    assert up == [], f"{module} (layer {_layer(module)}) imports higher layers: {up}"


#: The stable public surface. Changing it is a release note: add the name here and in docs/api.md.
PUBLIC = {
    "Activation", "EngineDriftError", "EngineImportError", "EngineInfo", "EngineNotInstalledError",
    "ExpertActivationTracker", "ExpertGroup", "InvalidInputError", "MissingDependencyError", "MixedQuantConfig",
    "MoECompatError", "MoECompatWarning", "MoEExperts", "PerExpertQuantConfig", "QuantConfig", "QuantScheme",
    "ScoringFunc", "TopK", "UnsupportedFeatureError", "__version__", "engine_info", "fused_experts", "fused_moe",
    "get_config_dtype_str", "get_config_file_name", "get_default_config", "get_moe_configs", "make_expert_map",
    "make_mixed_quant_config", "make_per_expert_quant_config", "make_quant_config", "moe_align_block_size", "mx",
    "mxfp4", "ops", "override_config", "quant", "select_experts", "set_debug", "to_engine_quant_config",
    "tuned_config_location",
}


def test_public_surface_is_pinned():
    assert set(mc.__all__) == PUBLIC
    for name in mc.__all__:
        assert hasattr(mc, name), name


def test_backend_literal_matches_the_engine_specs():
    import typing

    from moecompat.engines import ENGINE_NAMES
    from moecompat.vocab import BackendName

    assert typing.get_args(BackendName) == ("auto", "reference", *ENGINE_NAMES)
