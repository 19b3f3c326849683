"""Read the whole-surface snapshots of the engines' MoE packages (``tests/engines/data/<engine>_surface.json``).

The snapshots are written by ``tools/surface_snapshot.py`` from the released wheels (read with
``ast``, never imported). This module needs only the standard library and ``packaging``, so the
tools and the unit tests can both use it::

    from _surface import Surface  # with tools/ on sys.path

    s = Surface.load("vllm")
    s.releases                                   # ["0.6.6", ..., "0.33.0"], sorted by Version
    s.lookup("0.15.1", "vllm.model_executor.layers.fused_moe.router.fused_topk_router:fused_topk")
    s.defined_in("0.15.1", "fused_topk")         # every module:qualname whose name is fused_topk
    s.probe("0.15.1", fact.where, fact.kind, fact.param)

Data format (``format`` 1), one JSON object per engine, keys sorted::

    {
      "format": 1,
      "engine": "vllm",
      "scope": {"packages": [...], "modules": [...], "search": [...]},
      "releases": ["0.6.6", "0.6.6.post1", ...],        # sorted by packaging.version.Version
      "wheels": ["vllm-0.6.6-cp38-abi3-manylinux1_x86_64.whl", ...],   # aligned with releases
      "modules": {"<module>": [{"r": "0-3,5", "package": true, ...}, ...]},
      "defs": {"<module>": {"<qualname>": [{"r": "0-12", "kind": "function", "params": [...]}, ...]}}
    }

Every entry of ``modules`` and ``defs`` is a list of *variants*: one per distinct record, with
``r`` the releases it holds for, as indices into ``releases`` written as comma-separated ranges
(``"0-3,5,9-12"``); a key absent from every variant's ``r`` is absent from that release.

A definition record has ``kind`` (``function``, ``class``, ``assign``, ``import``) and, where they
apply: ``params`` (functions and methods: the signature's names in order, with ``"/"`` after the
positional-only ones, ``"*name"`` / ``"**name"`` for the catch-alls and a bare ``"*"`` before
keyword-only ones when there is no ``*args``; classes: their ``__init__``'s, else the annotated
fields of the class body as a dataclass / NamedTuple takes them, ``ClassVar`` and
``field(init=False)`` left out, inherited fields not included), ``src`` (imports: ``"module:name"`` or ``"module"``;
assignments of a plain name or attribute: the expression), ``bases`` (classes), ``deco``
(decorators, call arguments dropped) and ``cond`` (``"if"``: defined under a module- or class-level
``if`` / ``try`` / ``with``; ``"type_checking"``: only under ``if TYPE_CHECKING``). Nested classes
and methods are keyed by their dotted qualname. When a name is bound twice the last binding wins,
as at import time, except that a ``TYPE_CHECKING``-only binding never replaces a runtime one and
the ``else`` / ``except`` fallback of an ``if`` / ``try`` never replaces the binding of its main
branch (``try: from x import f`` / ``except ImportError: f = None`` records the import). A module
record has ``package`` (it is a package ``__init__``), ``star`` (modules it star-imports) and
``error`` (why its source did not parse; it then has no definitions).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from packaging.version import Version

__all__ = ["DATA_DIR", "FORMAT", "Definition", "Surface", "format_ranges", "parse_ranges", "surface_path"]

#: The data format version written and understood here.
FORMAT = 1

#: Where the snapshots live.
DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "tests" / "engines" / "data"

#: The parameter-list markers that are not parameter names.
MARKERS = frozenset({"/", "*"})


def surface_path(engine: str) -> pathlib.Path:
    """The default snapshot file of ``engine``.

    Args:
        engine: ``"vllm"`` or ``"sglang"``.

    Returns:
        ``tests/engines/data/<engine>_surface.json``.
    """
    return DATA_DIR / f"{engine}_surface.json"


def format_ranges(indices: Iterable[int]) -> str:
    """Write release indices as compact ranges.

    Args:
        indices: Release indices, in any order, duplicates allowed.

    Returns:
        Comma-separated ranges, e.g. ``"0-3,5,9-12"`` (empty string for no indices).
    """
    out: list[str] = []
    items = sorted(set(indices))
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def parse_ranges(text: str) -> list[int]:
    """Read ranges written by :func:`format_ranges`.

    Args:
        text: Comma-separated ranges such as ``"0-3,5"``.

    Returns:
        The sorted indices.
    """
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


@dataclass(frozen=True)
class Definition:
    """One recorded definition of one release.

    Attributes:
        kind: ``"function"``, ``"class"``, ``"assign"`` or ``"import"``.
        params: The recorded parameter list (see the module docstring), or ``None`` for
            assignments and imports.
        src: Where an import comes from (``"module:name"`` / ``"module"``), or the aliased
            expression of an assignment; ``None`` when not recorded.
        bases: A class's bases as written.
        deco: The decorators as written, call arguments dropped.
        cond: ``None`` (unconditional), ``"if"`` or ``"type_checking"``.
    """

    kind: str
    params: tuple[str, ...] | None = None
    src: str | None = None
    bases: tuple[str, ...] = ()
    deco: tuple[str, ...] = ()
    cond: str | None = None

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Definition:
        """Build from one stored variant (its ``r`` key is ignored)."""
        params = rec.get("params")
        return cls(
            kind=rec["kind"],
            params=tuple(params) if params is not None else None,
            src=rec.get("src"),
            bases=tuple(rec.get("bases", ())),
            deco=tuple(rec.get("deco", ())),
            cond=rec.get("cond"),
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter names without markers or star prefixes (empty when not recorded)."""
        return tuple(p.lstrip("*") for p in self.params or () if p not in MARKERS)

    @property
    def runtime(self) -> bool:
        """Whether the name exists at run time (not only under ``if TYPE_CHECKING``)."""
        return self.cond != "type_checking"


class Surface:
    """The recorded surface of one engine: every release, module and definition."""

    def __init__(self, data: dict[str, Any]) -> None:
        """Wrap loaded snapshot data.

        Args:
            data: The decoded JSON of a ``<engine>_surface.json`` file.

        Raises:
            ValueError: The data has another format version.
        """
        if data.get("format") != FORMAT:
            raise ValueError(f"surface data format {data.get('format')!r}, this reader knows {FORMAT}")
        self.data = data
        self.engine: str = data["engine"]
        self.releases: list[str] = list(data["releases"])
        self._index = {r: i for i, r in enumerate(self.releases)}
        self._modules = self._expand(data["modules"])
        self._defs = self._expand({f"{m}:{q}": v for m, quals in data["defs"].items() for q, v in quals.items()})
        self._by_release: dict[int, dict[str, Definition]] = {}

    @staticmethod
    def _expand(entries: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[frozenset[int], dict[str, Any]]]]:
        return {key: [(frozenset(parse_ranges(v["r"])), v) for v in variants] for key, variants in entries.items()}

    @classmethod
    def load(cls, engine: str, path: pathlib.Path | str | None = None) -> Surface:
        """Load an engine's snapshot.

        Args:
            engine: ``"vllm"`` or ``"sglang"``.
            path: The JSON file; default :func:`surface_path`.

        Returns:
            The surface.
        """
        p = pathlib.Path(path) if path is not None else surface_path(engine)
        return cls(json.loads(p.read_text()))

    # -- releases and modules ------------------------------------------------------------------
    def index(self, release: str) -> int:
        """The position of ``release`` in :attr:`releases`.

        Raises:
            KeyError: The release is not recorded.
        """
        try:
            return self._index[release]
        except KeyError:
            try:
                return self._index[str(Version(release))]
            except Exception:
                raise KeyError(f"{self.engine} {release} is not recorded") from None

    def has_release(self, release: str) -> bool:
        """Whether ``release`` is recorded."""
        try:
            self.index(release)
        except KeyError:
            return False
        return True

    def wheel(self, release: str) -> str:
        """The wheel file name ``release`` was read from."""
        return self.data["wheels"][self.index(release)]

    def module_record(self, release: str, module: str) -> dict[str, Any] | None:
        """The stored record of ``module`` in ``release`` (``package``, ``star``, ``error``), or ``None``."""
        i = self.index(release)
        for members, rec in self._modules.get(module, ()):
            if i in members:
                return rec
        return None

    def has_module(self, release: str, module: str) -> bool:
        """Whether ``release`` ships ``module`` (a recorded, in-scope module)."""
        return self.module_record(release, module) is not None

    def modules(self, release: str) -> list[str]:
        """Every in-scope module ``release`` ships, sorted."""
        i = self.index(release)
        return sorted(m for m, variants in self._modules.items() if any(i in members for members, _ in variants))

    def module_error(self, release: str, module: str) -> str | None:
        """Why ``module`` of ``release`` did not parse, or ``None``."""
        rec = self.module_record(release, module)
        return rec.get("error") if rec else None

    def parse_errors(self) -> Iterator[tuple[str, str, str]]:
        """Every ``(release, module, error)`` whose source did not parse."""
        for module, variants in sorted(self._modules.items()):
            for members, rec in variants:
                if "error" in rec:
                    for i in sorted(members):
                        yield self.releases[i], module, rec["error"]

    # -- definitions ---------------------------------------------------------------------------
    def lookup(self, release: str, where: str) -> Definition | None:
        """The definition at ``where`` in ``release``.

        Args:
            release: A recorded release.
            where: ``"module:qualname"``.

        Returns:
            The definition, or ``None`` if ``release`` does not define it.
        """
        i = self.index(release)
        for members, rec in self._defs.get(where, ()):
            if i in members:
                return Definition.from_record(rec)
        return None

    def definitions(self, release: str) -> dict[str, Definition]:
        """Every definition of ``release``, keyed by ``"module:qualname"`` (cached)."""
        i = self.index(release)
        if i not in self._by_release:
            out: dict[str, Definition] = {}
            for where, variants in self._defs.items():
                for members, rec in variants:
                    if i in members:
                        out[where] = Definition.from_record(rec)
                        break
            self._by_release[i] = out
        return self._by_release[i]

    def defined_in(self, release: str, qualname_suffix: str, kinds: Iterable[str] | None = None) -> list[str]:
        """Where ``release`` defines a name: for finding symbols that moved.

        Args:
            release: A recorded release.
            qualname_suffix: A qualname or its tail (``"fused_topk"``, ``"FusedMoE.forward"``);
                matches whole dotted components only.
            kinds: Only definitions of these kinds (default: every kind, imports included).

        Returns:
            The matching ``"module:qualname"`` keys, sorted.
        """
        wanted = set(kinds) if kinds is not None else None
        out = []
        for where, d in self.definitions(release).items():
            qual = where.partition(":")[2]
            if (qual == qualname_suffix or qual.endswith("." + qualname_suffix)) and (wanted is None or d.kind in wanted):
                out.append(where)
        return sorted(out)

    def resolve(self, release: str, where: str, depth: int = 8) -> tuple[str, Definition] | None:
        """Follow recorded re-exports (``from X import Y``) to the definition they name.

        Args:
            release: A recorded release.
            where: ``"module:qualname"``.
            depth: How many imports to follow at most.

        Returns:
            ``(where, definition)`` of the last definition reached, or ``None`` if ``where`` is
            not defined. Stops at an import whose source is outside the recorded scope.
        """
        d = self.lookup(release, where)
        if d is None:
            return None
        while depth > 0 and d.kind == "import" and d.src and ":" in d.src:
            target = self.lookup(release, d.src)
            if target is None:
                break
            where, d = d.src, target
            depth -= 1
        return where, d

    def releases_of(self, where: str) -> list[str]:
        """Every recorded release that defines ``where``."""
        idx = sorted({i for members, _ in self._defs.get(where, ()) for i in members})
        return [self.releases[i] for i in idx]

    def probe(self, release: str, where: str, kind: str, param: str = "") -> bool:
        """Whether a version fact's symbol (or parameter) is in ``release``.

        The semantics of the engine matrix's run-time probe (``tests/engines/test_facts.py``): a
        ``"symbol"`` fact holds when ``where`` is defined (at run time, in any branch; a class
        attribute in the class body itself, not inherited); a ``"param"`` fact when, moreover,
        ``param`` is among its recorded parameters (``"*args"`` / ``"**kw"`` as recorded), those
        of the definition a re-export names.
        A ``where`` without ``":"`` names a module.

        Args:
            release: A recorded release.
            where: ``"module:qualname"`` or ``"module"``.
            kind: ``"symbol"`` or ``"param"``.
            param: The parameter of a ``"param"`` fact.

        Returns:
            Whether the fact's symbol / parameter is present.

        Raises:
            ValueError: ``kind`` is not ``"symbol"`` or ``"param"``.
        """
        if kind not in ("symbol", "param"):
            raise ValueError(f"cannot probe a {kind!r} fact")
        if ":" not in where:
            return kind == "symbol" and self.has_module(release, where)
        d = self.lookup(release, where)
        if d is None or not d.runtime:
            return False
        if kind == "symbol":
            return True
        # A re-export has its source's parameters, as at run time (``inspect.signature`` of the
        # imported object).
        resolved = self.resolve(release, where)
        if resolved is not None:
            d = resolved[1]
        return d.params is not None and param in d.params
