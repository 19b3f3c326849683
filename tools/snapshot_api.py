"""Record which API symbols (and their parameters) each engine release defines, from its wheel.

Reads the wheels' Python sources with ``ast`` (nothing is imported or executed) and writes
``tests/engines/data/<engine>_api.json``: ``{version: {"module:qualname": [params] | null}}`` for
every symbol named by a version fact (plus extra symbols given with ``--symbol``). The unit
test ``tests/unit/test_facts_static.py`` checks every fact against every recorded release.

    python tools/snapshot_api.py vllm /path/to/wheels/vllm-*.whl
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import sys
import zipfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from moecompat.engines import ENGINES


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def _find(tree: ast.Module, qualname: str) -> list[str] | None:
    """Parameters of ``qualname`` (a function, method or class: its __init__), or None."""
    body: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in qualname.split("."):
        node = None
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name == part:
                node = stmt  # the last definition wins, as at import time
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    node = stmt
            elif isinstance(stmt, (ast.ImportFrom, ast.Import)):
                if any((al.asname or al.name.split(".")[-1]) == part for al in stmt.names):
                    node = stmt
        if node is None:
            return None
        body = node.body if isinstance(node, ast.ClassDef) else []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return _params(node)
    if isinstance(node, ast.ClassDef):
        for stmt in node.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                return _params(stmt)
        # dataclass / NamedTuple: the annotated fields are the constructor's parameters.
        return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    return []  # re-exported or assigned: present, parameters unknown


def snapshot(wheel: pathlib.Path, symbols: list[str]) -> tuple[str, dict[str, list[str] | None]]:
    m = re.match(r"[^-]+-([^-]+)-", wheel.name)
    assert m, wheel
    version = m.group(1)
    out: dict[str, list[str] | None] = {}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for sym in symbols:
            module, qualname = sym.split(":")
            path = module.replace(".", "/")
            src = next((p for p in (path + ".py", path + "/__init__.py") if p in names), None)
            if src is None:
                out[sym] = None
                continue
            tree = ast.parse(zf.read(src))
            out[sym] = _find(tree, qualname)
    return version, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=sorted(ENGINES))
    ap.add_argument("wheels", nargs="+", type=pathlib.Path)
    ap.add_argument("--symbol", action="append", default=[], help="extra module:qualname to record")
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    symbols = sorted({f.where for f in ENGINES[args.engine].facts if f.where} | set(args.symbol))
    out_path = args.out or pathlib.Path(__file__).resolve().parents[1] / "tests/engines/data" / f"{args.engine}_api.json"
    data = json.loads(out_path.read_text()) if out_path.exists() else {}
    for wheel in args.wheels:
        version, snap = snapshot(wheel, symbols)
        data[version] = snap
        print(f"{args.engine} {version}: {sum(v is not None for v in snap.values())}/{len(snap)} symbols present")
    from packaging.version import Version

    data = {k: data[k] for k in sorted(data, key=Version)}
    out_path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
