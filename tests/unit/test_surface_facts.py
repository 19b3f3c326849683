"""Every engine version fact against the whole-surface snapshot of every recorded release.

The snapshots (``tests/engines/data/<engine>_surface.json``) are read from the released wheels by
``tools/surface_snapshot.py`` and loaded with ``tools/_surface.py``; a new fact needs no new
snapshot, a new release is one ``python tools/surface_snapshot.py ENGINE VERSION``.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
from packaging.version import Version

from moecompat.engines import ENGINES

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from _surface import Surface, format_ranges, parse_ranges, surface_path  # noqa: E402
from surface_snapshot import SurfaceStore, read_module  # noqa: E402

SURFACES = {name: Surface.load(name) for name in ENGINES if surface_path(name).exists()}

# One test per fact, over every recorded release (a test per release and fact made 16,751 tests
# whose collection and reporting cost more than the checks).
CASES = [
    pytest.param(name, fact, id=f"{name}-{fact.key}")
    for name in SURFACES
    for fact in ENGINES[name].facts
    # Behaviour facts have their own tests; a non-static one (a module __getattr__ attribute) is
    # invisible to ast and pinned by the engine matrix (tests/engines/test_facts.py) alone.
    if fact.kind != "behaviour" and fact.static
]


def test_surfaces_exist():
    assert set(SURFACES) == set(ENGINES)


@pytest.mark.parametrize("engine", sorted(SURFACES))
def test_surface_file_is_canonical(engine):
    """The file is exactly what the snapshot tool writes: sorted, deduplicated, one format."""
    path = surface_path(engine)
    assert SurfaceStore(engine, path).dumps() == path.read_text()


@pytest.mark.parametrize("engine", sorted(SURFACES))
def test_every_module_parsed(engine):
    errors = list(SURFACES[engine].parse_errors())
    assert not errors, errors


@pytest.mark.parametrize(("engine", "fact"), CASES)
def test_fact_matches_every_release(engine, fact):
    surface = SURFACES[engine]
    wrong = [f"{release} {'has' if present else 'lacks'} it"
             for release in surface.releases
             if (present := surface.probe(release, fact.where, fact.kind, fact.param)) != fact.holds_for(Version(release))]
    assert not wrong, f"{engine}: {fact.what!r} claims {fact.versions}, but " + "; ".join(wrong)


READER_SOURCE = b"""
from typing import TYPE_CHECKING, ClassVar
from dataclasses import dataclass, field
from . import sibling
from ..up import thing as alias

if TYPE_CHECKING:
    A = int
else:
    A = object

B = 1
B = 2

try:
    from fast import f
except ImportError:
    f = None


def h(x):
    ...


def h(a, *, k):
    ...


@dataclass
class Cfg:
    x: int
    c: ClassVar[int] = 0
    hidden: int = field(init=False)
    v: int = 1

    class Inner:
        def m(self):
            ...


class Old:
    def gone(self):
        ...


class Old:
    def __init__(self, r):
        ...
"""


def test_reader_rules():
    """The definitions ``tools/surface_snapshot.py`` records from one module's source."""
    defs = read_module(READER_SOURCE, "pkg.sub.mod", is_package=False)["defs"]
    assert defs["sibling"] == {"kind": "import", "src": "pkg.sub:sibling"}
    assert defs["alias"] == {"kind": "import", "src": "pkg.up:thing"}
    assert defs["A"] == {"kind": "assign", "src": "object", "cond": "if"}  # the runtime binding
    assert defs["B"] == {"kind": "assign"}  # the last binding wins
    assert defs["f"] == {"kind": "import", "src": "fast:f", "cond": "if"}  # not the except fallback
    assert defs["h"]["params"] == ["a", "*", "k"]  # redefined: the last def
    assert read_module(b"def g(a, /, b, *args, k, **kw): ...", "m", is_package=False)["defs"]["g"]["params"] == [
        "a", "/", "b", "*args", "k", "**kw",
    ]
    assert defs["Cfg"]["params"] == ["x", "v"]  # no ClassVar, no init=False field
    assert defs["Cfg.Inner.m"]["params"] == ["self"]
    assert defs["Old"]["params"] == ["self", "r"] and "Old.gone" not in defs  # redefined class
    assert read_module(b"def f(:", "m", is_package=False)["module"]["error"].startswith("SyntaxError")


def test_ranges_round_trip():
    assert format_ranges([5, 0, 1, 2, 9, 3, 10]) == "0-3,5,9-10"
    assert parse_ranges("0-3,5,9-10") == [0, 1, 2, 3, 5, 9, 10]
    assert format_ranges([]) == "" and parse_ranges("") == []
