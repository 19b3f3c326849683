"""Record the whole API surface of an engine's MoE modules, one release at a time, from its wheels.

Reads each wheel's Python sources with ``ast`` (nothing is imported or executed) for the engine's
MoE-relevant modules (:data:`SCOPES`) and merges every definition (functions, classes, methods,
nested classes, assignments, imports) with its parameters into
``tests/engines/data/<engine>_surface.json``, deduplicated across releases (format: see
``tools/_surface.py``). A release already recorded is replaced. Given a version instead of a
wheel, the wheel is downloaded with pip to a temporary directory, read and deleted::

    python tools/surface_snapshot.py vllm /path/to/vllm-0.26.0-cp38-abi3-manylinux1_x86_64.whl
    python tools/surface_snapshot.py vllm 0.26.0 0.27.1
    python tools/surface_snapshot.py sglang --pypi ">=0.4.7,<=0.5.23" --missing

``tools/_surface.py`` reads the result; ``tests/unit/test_surface_facts.py`` checks every version
fact against every recorded release and ``tools/diff_release.py`` drafts a new release's fact
changes.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _surface import FORMAT, format_ranges, parse_ranges, surface_path

__all__ = [
    "SCOPES",
    "ReleaseSnapshot",
    "Scope",
    "SurfaceStore",
    "download_wheel",
    "pypi_releases",
    "snapshot_release",
    "snapshot_wheel",
]


@dataclass(frozen=True)
class Scope:
    """Which modules of an engine's wheel are recorded.

    Attributes:
        distribution: The PyPI distribution.
        root: The top-level package.
        packages: Modules recorded with every submodule (a plain module or a package).
        modules: Modules recorded alone (no submodules).
        search: Top-level function names; every module of ``root`` defining one is recorded
            (for helpers that moved between releases).
    """

    distribution: str
    root: str
    packages: tuple[str, ...]
    modules: tuple[str, ...] = ()
    search: tuple[str, ...] = ()

    def covers(self, module: str) -> bool:
        """Whether ``module`` is in scope by name (``search`` aside)."""
        return module in self.modules or any(module == p or module.startswith(p + ".") for p in self.packages)

    def as_json(self) -> dict[str, list[str]]:
        """The scope as stored in the data file."""
        return {"packages": sorted(self.packages), "modules": sorted(self.modules), "search": sorted(self.search)}


_VLLM_FM = "vllm.model_executor.layers.fused_moe"
_VLLM_Q = "vllm.model_executor.layers.quantization"
_SGL = "sglang.srt"

#: The recorded modules of each engine.
SCOPES: dict[str, Scope] = {
    "vllm": Scope(
        distribution="vllm",
        root="vllm",
        packages=(
            _VLLM_FM,
            f"{_VLLM_Q}.mxfp4",
            f"{_VLLM_Q}.utils.fp8_utils",
            f"{_VLLM_Q}.utils.mxfp4_utils",
            "vllm.envs",
            "vllm.config",
            "vllm._custom_ops",
            "vllm.utils.deep_gemm",
        ),
        modules=("vllm.platforms", "vllm.platforms.interface"),
        search=("is_deep_gemm_e8m0_used",),
    ),
    "sglang": Scope(
        distribution="sglang",
        root="sglang",
        packages=(
            f"{_SGL}.layers.moe",
            f"{_SGL}.layers.quantization.fp8_kernel",
            f"{_SGL}.layers.quantization.int8_kernel",
            f"{_SGL}.server_args",
            f"{_SGL}.runtime_context",
            f"{_SGL}.eplb",
            f"{_SGL}.managers.expert_distribution",
        ),
    ),
}

#: Platform flags for releases without a wheel pip would pick for this interpreter.
_PLATFORMS = (
    "manylinux1_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
    "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64",
)
_PYTHONS = ("3.11", "3.10", "3.9", "3.12", "3.13")
_MAX_TEXT = 120  # longest decorator / base / alias text kept


# -- reading one module ------------------------------------------------------------------------
def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """A function's parameter names in signature order, with ``/`` and bare ``*`` markers."""
    a = fn.args
    names = [x.arg for x in a.posonlyargs]
    if a.posonlyargs:
        names.append("/")
    names += [x.arg for x in a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        names.append("*")
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def _text(node: ast.AST) -> str:
    s = ast.unparse(node)
    return s if len(s) <= _MAX_TEXT else s[: _MAX_TEXT - 3] + "..."


def _decorators(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[str]:
    return [_text(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _target_names(target: ast.expr) -> Iterable[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


class _ModuleReader:
    """Collects the definitions of one parsed module."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.defs: dict[str, dict[str, Any]] = {}
        self.star: list[str] = []
        self._log: list[str] = []  # every qualname bound, in order
        self._protected: frozenset[str] = frozenset()  # bound by a branch an alternative must not replace

    def _absolute(self, level: int, name: str | None) -> str:
        if level == 0:
            return name or ""
        base = self.package.split(".")
        base = base[: len(base) - (level - 1)] if level > 1 else base
        return ".".join([*base, name] if name else base)

    def _record(self, qual: str, rec: dict[str, Any], cond: str | None) -> bool:
        old = self.defs.get(qual)
        if cond == "type_checking" and old is not None and old.get("cond") != "type_checking":
            return False  # a TYPE_CHECKING-only binding does not replace a runtime one
        if qual in self._protected:
            return False  # a fallback (else / except) does not replace the main branch's binding
        if cond:
            rec["cond"] = cond
        prefix = qual + "."
        for k in [k for k in self.defs if k.startswith(prefix)]:
            del self.defs[k]  # the new binding replaces a class and its members
        self.defs[qual] = rec
        self._log.append(qual)
        return True

    def _branches(self, main: Sequence[ast.stmt], fallbacks: Sequence[Sequence[ast.stmt]], prefix: str, main_cond: str, cond: str) -> None:
        """Walk an ``if`` / ``try``: the fallback branches do not replace the main one's bindings."""
        start = len(self._log)
        self.walk(main, prefix, main_cond)
        bound = {q for q in self._log[start:] if self.defs.get(q, {}).get("cond") != "type_checking"}
        saved = self._protected
        self._protected = saved | bound
        for block in fallbacks:
            self.walk(block, prefix, cond)
        self._protected = saved

    def walk(self, body: Sequence[ast.stmt], prefix: str = "", cond: str | None = None) -> None:
        """Record the definitions of a module or class body (descending into if/try/with)."""
        inner = "type_checking" if cond == "type_checking" else "if"
        for stmt in body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rec: dict[str, Any] = {"kind": "function", "params": _params(stmt)}
                if stmt.decorator_list:
                    rec["deco"] = _decorators(stmt)
                self._record(prefix + stmt.name, rec, cond)
            elif isinstance(stmt, ast.ClassDef):
                self._class(stmt, prefix, cond)
            elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                value = stmt.value
                for t in targets:
                    for name in _target_names(t):
                        rec = {"kind": "assign"}
                        if isinstance(value, (ast.Name, ast.Attribute)) and isinstance(t, ast.Name):
                            rec["src"] = _text(value)
                        self._record(prefix + name, rec, cond)
            elif isinstance(stmt, ast.Import):
                for al in stmt.names:
                    if al.asname:
                        self._record(prefix + al.asname, {"kind": "import", "src": al.name}, cond)
                    else:
                        top = al.name.split(".")[0]
                        self._record(prefix + top, {"kind": "import", "src": top}, cond)
            elif isinstance(stmt, ast.ImportFrom):
                source = self._absolute(stmt.level, stmt.module)
                for al in stmt.names:
                    if al.name == "*":
                        if not prefix and source not in self.star:
                            self.star.append(source)
                        continue
                    self._record(prefix + (al.asname or al.name), {"kind": "import", "src": f"{source}:{al.name}"}, cond)
            elif isinstance(stmt, ast.If):
                tc = _is_type_checking(stmt.test)
                self._branches(stmt.body, [stmt.orelse], prefix, "type_checking" if tc else inner, inner)
            elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":  # TryStar: 3.11+
                tried = cast(ast.Try, stmt)
                self._branches(tried.body, [h.body for h in tried.handlers], prefix, inner, inner)
                self.walk(tried.orelse, prefix, inner)
                self.walk(tried.finalbody, prefix, inner)
            elif isinstance(stmt, (ast.With, ast.AsyncWith)):
                self.walk(stmt.body, prefix, inner)

    def _class(self, node: ast.ClassDef, prefix: str, cond: str | None) -> None:
        qual = prefix + node.name
        rec: dict[str, Any] = {"kind": "class", "params": []}
        if node.bases:
            rec["bases"] = [_text(b) for b in node.bases]
        if node.decorator_list:
            rec["deco"] = _decorators(node)
        if not self._record(qual, rec, cond):
            return
        self.walk(node.body, qual + ".", cond)
        init = self.defs.get(qual + ".__init__")
        if init is not None and init["kind"] == "function":
            rec["params"] = list(init["params"])
        else:
            # dataclass / NamedTuple: the annotated fields are the constructor's parameters.
            rec["params"] = [
                s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and _is_field(s)
            ]


def _is_field(stmt: ast.AnnAssign) -> bool:
    """Whether an annotated class-body name is a dataclass / NamedTuple constructor field: not a
    ``ClassVar``, not ``field(init=False)``, not the ``KW_ONLY`` marker."""
    ann = stmt.annotation
    head = ann.value if isinstance(ann, ast.Subscript) else ann
    name = head.attr if isinstance(head, ast.Attribute) else head.id if isinstance(head, ast.Name) else ""
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
        name = ann.value.split("[")[0].rsplit(".", 1)[-1]
    if name in ("ClassVar", "KW_ONLY"):
        return False
    value = stmt.value
    if isinstance(value, ast.Call):
        func = value.func
        fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if fname == "field" and any(k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False for k in value.keywords):
            return False
    return True


def read_module(source: bytes, module: str, is_package: bool, filename: str = "<wheel>") -> dict[str, Any]:
    """Read one module's source.

    Args:
        source: The file's bytes.
        module: Its dotted name.
        is_package: Whether it is a package ``__init__``.
        filename: For error messages.

    Returns:
        ``{"module": record, "defs": {qualname: record}}`` (records as in ``tools/_surface.py``).
    """
    mod_rec: dict[str, Any] = {}
    if is_package:
        mod_rec["package"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source, filename=filename)
    except (SyntaxError, ValueError) as exc:
        mod_rec["error"] = f"{type(exc).__name__}: {exc}"
        return {"module": mod_rec, "defs": {}}
    reader = _ModuleReader(module, is_package)
    reader.walk(tree.body)
    if reader.star:
        mod_rec["star"] = reader.star
    return {"module": mod_rec, "defs": reader.defs}


# -- reading one wheel -------------------------------------------------------------------------
@dataclass
class ReleaseSnapshot:
    """The surface of one release.

    Attributes:
        version: The normalized release version.
        wheel: The wheel's file name.
        modules: Module name -> module record.
        defs: ``"module:qualname"`` -> definition record.
    """

    version: str
    wheel: str
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    defs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """``"module: error"`` for every module that did not parse."""
        return [f"{m}: {r['error']}" for m, r in sorted(self.modules.items()) if "error" in r]


def _module_name(path: str) -> tuple[str, bool] | None:
    if not path.endswith(".py"):
        return None
    parts = path[:-3].split("/")
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return ".".join(parts), is_package


def wheel_version(wheel: pathlib.Path) -> str:
    """The normalized version in a wheel's file name."""
    m = re.match(r"[^-]+-([^-]+)-", wheel.name)
    if not m:
        raise ValueError(f"not a wheel file name: {wheel.name}")
    try:
        return str(Version(m.group(1)))
    except InvalidVersion:
        return m.group(1)


def snapshot_wheel(engine: str, wheel: pathlib.Path) -> ReleaseSnapshot:
    """Read the in-scope modules of one wheel.

    Args:
        engine: A key of :data:`SCOPES`.
        wheel: The wheel file.

    Returns:
        The release's surface.
    """
    scope = SCOPES[engine]
    snap = ReleaseSnapshot(wheel_version(wheel), wheel.name)
    searches = [re.compile(rb"^(?:async )?def " + re.escape(n.encode()) + rb"\(", re.M) for n in scope.search]
    with zipfile.ZipFile(wheel) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            named = _module_name(info.filename)
            if named is None:
                continue
            module, is_package = named
            if module != scope.root and not module.startswith(scope.root + "."):
                continue
            source: bytes | None = None
            if not scope.covers(module):
                if not searches:
                    continue
                source = zf.read(info)
                if not any(p.search(source) for p in searches):
                    continue
            if source is None:
                source = zf.read(info)
            got = read_module(source, module, is_package, info.filename)
            snap.modules[module] = got["module"]
            for qual, rec in got["defs"].items():
                snap.defs[f"{module}:{qual}"] = rec
    return snap


# -- downloading -------------------------------------------------------------------------------
def pypi_releases(distribution: str, spec: str = "") -> list[str]:
    """Every final or post release of a distribution on PyPI that has files.

    Args:
        distribution: The PyPI name.
        spec: Only releases in this PEP 440 specifier (default: all).

    Returns:
        Normalized versions, sorted; pre- and dev-releases left out.
    """
    with urllib.request.urlopen(f"https://pypi.org/pypi/{distribution}/json", timeout=120) as resp:
        data = json.load(resp)
    spec_set = SpecifierSet(spec)
    out = []
    for raw, files in data["releases"].items():
        try:
            v = Version(raw)
        except InvalidVersion:
            continue
        if files and not v.is_prerelease and not v.is_devrelease and spec_set.contains(v):
            out.append(v)
    return [str(v) for v in sorted(out)]


def download_wheel(distribution: str, version: str, dest: pathlib.Path) -> pathlib.Path:
    """Download one release's wheel (no dependencies) with pip.

    Tries this interpreter's tags first, then, for releases without such a wheel, CPython
    3.11 / 3.10 / 3.9 / 3.12 / 3.13 on the x86-64 manylinux platforms.

    Args:
        distribution: The PyPI name.
        version: The release.
        dest: An empty directory to download into.

    Returns:
        The wheel file.

    Raises:
        RuntimeError: No attempt found a wheel.
    """
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(dest), f"{distribution}=={version}"]
    plats = [x for p in _PLATFORMS for x in ("--platform", p)]
    attempts = [base] + [[*base, "--python-version", py, "--implementation", "cp", *plats] for py in _PYTHONS]
    errors = []
    for cmd in attempts:
        res = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(dest.glob("*.whl"))
        if res.returncode == 0 and wheels:
            return wheels[0]
        errors.append((res.stderr or res.stdout).strip().splitlines()[-1:] or ["?"])
    raise RuntimeError(f"no wheel for {distribution}=={version}: {errors[-1][0]}")


def snapshot_release(engine: str, version: str) -> ReleaseSnapshot:
    """Download, read and delete one release's wheel.

    Args:
        engine: A key of :data:`SCOPES`.
        version: The release.

    Returns:
        The release's surface.
    """
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"surface-{engine}-"))
    try:
        return snapshot_wheel(engine, download_wheel(SCOPES[engine].distribution, version, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the data file -----------------------------------------------------------------------------
def _canon(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"))


class SurfaceStore:
    """The snapshot file of one engine, for adding releases to (see ``tools/_surface.py``)."""

    def __init__(self, engine: str, path: pathlib.Path | None = None) -> None:
        """Load ``path`` (default ``tests/engines/data/<engine>_surface.json``) if it exists.

        Raises:
            ValueError: The file has another format version or engine.
        """
        self.engine = engine
        self.path = path or surface_path(engine)
        self.wheels: dict[str, str] = {}
        # key -> canonical record -> set of releases
        self.modules: dict[str, dict[str, set[str]]] = {}
        self.defs: dict[str, dict[str, set[str]]] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT or data.get("engine") != engine:
                raise ValueError(f"{self.path}: format {data.get('format')} of {data.get('engine')}, expected {FORMAT} of {engine}")
            releases = data["releases"]
            self.wheels = dict(zip(releases, data["wheels"], strict=True))
            flat_defs = {f"{m}:{q}": v for m, quals in data["defs"].items() for q, v in quals.items()}
            for store, entries in ((self.modules, data["modules"]), (self.defs, flat_defs)):
                for key, variants in entries.items():
                    slot = store.setdefault(key, {})
                    for v in variants:
                        rec = {k: x for k, x in v.items() if k != "r"}
                        slot.setdefault(_canon(rec), set()).update(releases[i] for i in parse_ranges(v["r"]))

    @property
    def releases(self) -> list[str]:
        """The recorded releases, sorted."""
        return sorted(self.wheels, key=Version)

    def add(self, snap: ReleaseSnapshot) -> None:
        """Record one release (replacing it if already recorded)."""
        self.remove(snap.version)
        self.wheels[snap.version] = snap.wheel
        for store, entries in ((self.modules, snap.modules), (self.defs, snap.defs)):
            for key, rec in entries.items():
                store.setdefault(key, {}).setdefault(_canon(rec), set()).add(snap.version)

    def remove(self, version: str) -> None:
        """Forget one release."""
        self.wheels.pop(version, None)
        for store in (self.modules, self.defs):
            for key in list(store):
                slot = store[key]
                for canon in list(slot):
                    slot[canon].discard(version)
                    if not slot[canon]:
                        del slot[canon]
                if not slot:
                    del store[key]

    def to_json(self) -> dict[str, Any]:
        """The data as stored: sorted and deduplicated."""
        releases = self.releases
        index = {r: i for i, r in enumerate(releases)}

        def variants(slot: dict[str, set[str]]) -> list[dict[str, Any]]:
            out = []
            for canon, members in slot.items():
                idx = sorted(index[r] for r in members)
                out.append((idx[0], {"r": format_ranges(idx), **json.loads(canon)}))
            return [rec for _, rec in sorted(out, key=lambda x: x[0])]

        defs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for key in sorted(self.defs):
            module, _, qual = key.partition(":")
            defs.setdefault(module, {})[qual] = variants(self.defs[key])
        return {
            "format": FORMAT,
            "engine": self.engine,
            "scope": SCOPES[self.engine].as_json(),
            "releases": releases,
            "wheels": [self.wheels[r] for r in releases],
            "modules": {k: variants(self.modules[k]) for k in sorted(self.modules)},
            "defs": defs,
        }

    def dumps(self) -> str:
        """Deterministic JSON text, one module / definition per line (for readable diffs)."""
        data = self.to_json()

        def dump(x: Any) -> str:
            return json.dumps(x, sort_keys=True, separators=(",", ":"))

        lines = ["{"]
        for key in ("format", "engine", "scope", "releases", "wheels"):
            lines.append(f"{dump(key)}:{dump(data[key])},")
        def block(entries: dict[str, Any]) -> list[str]:
            return [f"{dump(k)}:{dump(v)}{',' if i < len(entries) - 1 else ''}" for i, (k, v) in enumerate(entries.items())]

        lines.append('"modules":{')
        lines += block(data["modules"])
        lines.append('},')
        lines.append('"defs":{')
        modules = list(data["defs"].items())
        for i, (module, quals) in enumerate(modules):
            lines.append(f"{dump(module)}:{{")
            lines += block(quals)
            lines.append("}," if i < len(modules) - 1 else "}")
        lines.append("}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self) -> None:
        """Write the file (atomically)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(self.dumps())
        tmp.replace(self.path)


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("engine", choices=sorted(SCOPES))
    ap.add_argument("items", nargs="*", help="wheel files or release versions (downloaded with pip)")
    ap.add_argument("--pypi", metavar="SPEC", help="also every final/post release on PyPI in this specifier, e.g. '>=0.4.7'")
    ap.add_argument("--missing", action="store_true", help="skip releases already recorded")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="the data file (default tests/engines/data/<engine>_surface.json)")
    ap.add_argument("--keep-going", action="store_true", help="report a failed release and go on")
    args = ap.parse_args(argv)
    if not args.items and not args.pypi:
        ap.error("give wheels, versions or --pypi SPEC")

    store = SurfaceStore(args.engine, args.out)
    items: list[str] = list(args.items)
    if args.pypi:
        items += [v for v in pypi_releases(SCOPES[args.engine].distribution, args.pypi) if v not in items]
    failed = []
    for item in items:
        path = pathlib.Path(item)
        try:
            if path.suffix == ".whl" and path.exists():
                if args.missing and wheel_version(path) in store.wheels:
                    continue
                snap = snapshot_wheel(args.engine, path)
            else:
                version = str(Version(item))
                if args.missing and version in store.wheels:
                    continue
                snap = snapshot_release(args.engine, version)
        except Exception as exc:
            if not args.keep_going:
                raise
            failed.append(item)
            print(f"{args.engine} {item}: FAILED: {exc}", file=sys.stderr)
            continue
        store.add(snap)
        store.save()
        print(f"{args.engine} {snap.version}: {len(snap.modules)} modules, {len(snap.defs)} definitions ({snap.wheel})", flush=True)
        for err in snap.errors:
            print(f"  parse error: {err}", file=sys.stderr)
    size = store.path.stat().st_size if store.path.exists() else 0
    print(f"{store.path}: {len(store.wheels)} releases, {size / 1e6:.2f} MB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
