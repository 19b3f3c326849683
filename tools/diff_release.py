"""Draft a new engine release's version-fact changes from the whole-surface snapshots.

Compares two recorded releases (``tests/engines/data/<engine>_surface.json``; a release not
recorded yet is snapshotted first, see ``tools/surface_snapshot.py``) and lists:

(a) every version fact whose probe changes between OLD and NEW, or whose ``versions`` disagree
    with NEW, with a drafted ``versions`` specifier, and suggested new ``Fact(...)`` lines
    (a parameter that appears on a symbol a fact names; the new home of a moved symbol);
(b) moves: a fact's symbol gone from NEW while a definition of the same name (and similar
    parameters) exists elsewhere in NEW;
(c) renamed parameters (same position, another name) of the symbols the facts name;
(d) added and removed parameters of those symbols;
(e) with ``--all``: the same for every recorded definition.

    python tools/diff_release.py 0.14.1 0.15.1 --engine vllm
    python tools/diff_release.py 0.5.10.post1 0.5.11 --engine sglang --json
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import pathlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import Specifier, SpecifierSet
from packaging.version import Version

_TOOLS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_TOOLS))
sys.path.insert(0, str(_TOOLS.parent))

from _surface import MARKERS, Definition, Surface, surface_path  # noqa: E402

__all__ = [
    "FactChange",
    "Move",
    "ParamDiff",
    "ReleaseDiff",
    "diff_releases",
    "draft_specifier",
    "param_diff",
    "separating_bound",
]

_CALLABLE = ("function", "class")

#: Parameter similarity from which a same-name definition counts as the moved one.
ALIKE = 0.3


# -- pieces ------------------------------------------------------------------------------------
def separating_bound(old: str, new: str) -> str:
    """The shortest version ``b`` with ``old < b <= new`` (``0.14.1, 0.15.1 -> 0.15``).

    Args:
        old: The older release.
        new: The newer release.

    Returns:
        ``major.minor`` of NEW if it separates them, else ``major.minor.micro``, else NEW.
    """
    o, n = Version(old), Version(new)
    for cand in (f"{n.major}.{n.minor}", f"{n.major}.{n.minor}.{n.micro}", str(n)):
        if o < Version(cand) <= n:
            return cand
    return str(n)


def _below(v: Version) -> Version | None:
    """A version just below ``v`` (its last non-zero release component less one)."""
    parts = list(v.release)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] > 0:
            parts[i] -= 1
            return Version(".".join(map(str, parts[: i + 1])))
    return None


def draft_specifier(
    versions: str, old: str, new: str, present_new: bool, next_change: str | None = None, history: Sequence[str] = ()
) -> str | None:
    """Draft a fact's ``versions`` so that it holds for NEW exactly when ``present_new``.

    The draft says the same as ``versions`` for OLD and earlier releases (checked on
    ``history``, OLD and the versions around each bound of ``versions``).

    Args:
        versions: The fact's PEP 440 specifier (``">=0.11"``).
        old: The older release (the fact is assumed right for it).
        new: The newer release.
        present_new: Whether NEW has the fact's symbol / parameter.
        next_change: The first recorded release after NEW whose probe differs from NEW's, if
            any: where a range that ``versions`` ends too early ends, or where one that it
            starts too early starts.
        history: Recorded releases up to OLD to check the draft on.

    Returns:
        The drafted specifier (``">=0.11,<0.15"``), ``versions`` itself if it already agrees with
        NEW, or ``None`` if no simple edit works (a symbol that reappears: review by hand).
    """
    spec = SpecifierSet(versions)
    o, n = Version(old), Version(new)
    if spec.contains(n, prereleases=True) == present_new:
        return versions
    parts = [Specifier(s.strip()) for s in versions.split(",") if s.strip()]
    claims_old = spec.contains(o, prereleases=True)
    if present_new:
        # drop what excludes NEW; if OLD stays excluded, NEW is where it starts
        kept = [s for s in parts if s.contains(n, prereleases=True)]
        if not claims_old:
            kept.append(Specifier(f">={separating_bound(old, new)}"))
        if next_change is not None:
            kept.append(Specifier(f"<{next_change}"))
    elif claims_old:
        # gone after OLD: end it at NEW
        kept = [s for s in parts if not (s.operator in ("<", "<=") and Version(s.version) > o)]
        kept.append(Specifier(f"<{separating_bound(old, new)}"))
    elif next_change is not None:
        # it starts later than ``versions`` says
        kept = [s for s in parts if not (s.operator in (">=", ">", "~=") and Version(s.version) <= n)]
        kept.append(Specifier(f">={next_change}"))
    else:
        return None
    order = {">=": 0, ">": 0, "~=": 0, "<": 2, "<=": 2}
    draft = ",".join(str(s) for s in sorted(kept, key=lambda s: order.get(s.operator, 1)))  # lower bounds first
    ok = SpecifierSet(draft)
    points = {o, *(Version(r) for r in history)}
    for s in parts:
        points.add(Version(s.version))
        below = _below(Version(s.version))
        if below is not None:
            points.add(below)
    if any(ok.contains(p, prereleases=True) != spec.contains(p, prereleases=True) for p in points if p <= o):
        return None
    if ok.contains(n, prereleases=True) != present_new:
        return None
    return draft


def _split(params: Sequence[str] | None) -> tuple[list[str], set[str]]:
    """Parameter names without markers, and the keyword-only ones."""
    names: list[str] = []
    kwonly: set[str] = set()
    after_star = False
    for p in params or ():
        if p == "/":
            continue
        if p == "*" or (p.startswith("*") and not p.startswith("**")):
            after_star = True
            if p == "*":
                continue
        if after_star and not p.startswith("*"):
            kwonly.add(p)
        names.append(p)
    return names, kwonly


def _alike(a: str, b: str) -> bool:
    """Whether two parameter names look like one renamed (``intermediate_size_per_partition``
    and ``intermediate_size``)."""
    x, y = a.lstrip("*_"), b.lstrip("*_")
    return bool(x and y) and (x in y or y in x or difflib.SequenceMatcher(a=x, b=y).ratio() >= 0.6)


@dataclass
class ParamDiff:
    """How one definition's parameters changed.

    Attributes:
        where: ``"module:qualname"`` (NEW's, for a move).
        old: OLD's recorded parameters.
        new: NEW's recorded parameters.
        added: Parameters only NEW has (renames excluded).
        removed: Parameters only OLD has (renames excluded).
        renamed: ``(old_name, new_name)`` at the same position.
        now_kwonly: Parameters that became keyword-only.
        now_positional: Parameters that stopped being keyword-only.
        old_where: OLD's ``"module:qualname"`` when it differs (a move).
    """

    where: str
    old: list[str]
    new: list[str]
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    now_kwonly: list[str] = field(default_factory=list)
    now_positional: list[str] = field(default_factory=list)
    old_where: str = ""

    @property
    def changed(self) -> bool:
        """Whether anything changed."""
        return bool(self.added or self.removed or self.renamed or self.now_kwonly or self.now_positional)


def param_diff(where: str, old: Sequence[str] | None, new: Sequence[str] | None, old_where: str = "") -> ParamDiff:
    """Compare two recorded parameter lists.

    A parameter replaced at the same position by one of another name is a rename when it is the
    only one replaced there or the names are alike; the others are added or removed.

    Args:
        where: The definition (for the report).
        old: OLD's recorded parameters (markers allowed).
        new: NEW's recorded parameters.
        old_where: OLD's location, for a move.

    Returns:
        The differences.
    """
    o_names, o_kw = _split(old)
    n_names, n_kw = _split(new)
    d = ParamDiff(where, list(old or ()), list(new or ()), old_where=old_where)
    sm = difflib.SequenceMatcher(a=o_names, b=n_names, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        gone, came = o_names[i1:i2], n_names[j1:j2]
        if tag == "replace" and len(gone) == len(came):
            rest_gone, rest_came = [], []
            for a, b in zip(gone, came, strict=True):
                # one parameter for another, or one of a like name; not one that moved
                if a not in n_names and b not in o_names and (len(gone) == 1 or _alike(a, b)):
                    d.renamed.append((a, b))
                else:
                    rest_gone.append(a)
                    rest_came.append(b)
            gone, came = rest_gone, rest_came
        d.removed += [a for a in gone if a not in n_names]
        d.added += [b for b in came if b not in o_names]
    common = set(o_names) & set(n_names)
    d.now_kwonly = [p for p in n_names if p in common and p in n_kw and p not in o_kw]
    d.now_positional = [p for p in n_names if p in common and p in o_kw and p not in n_kw]
    return d


def _similarity(a: Definition, b: Definition) -> float:
    x = {n for n in a.names if n not in ("self", "cls")}
    y = {n for n in b.names if n not in ("self", "cls")}
    if not x and not y:
        return 1.0 if a.kind == b.kind else 0.5
    return len(x & y) / len(x | y)


def _final(where: str) -> str:
    return where.partition(":")[2].rpartition(".")[2]


def _file(surface: Surface, release: str, where: str) -> str:
    """The source file of ``where``'s module, relative to the recorded package it is in."""
    module = where.partition(":")[0]
    roots = [p for p in surface.data["scope"]["packages"] if module == p or module.startswith(p + ".")]
    root = max(roots, key=len, default=module.rpartition(".")[0])
    rest = module[len(root) + 1 :] if module != root else module.rpartition(".")[2]
    rec = surface.module_record(release, module) or {}
    return rest.replace(".", "/") + ("/__init__.py" if rec.get("package") else ".py")


@dataclass
class Move:
    """A definition gone from its OLD place, with a NEW definition of the same name elsewhere.

    Attributes:
        old_where: Where OLD defines it.
        new_where: A NEW definition of the same (or underscore-prefixed) name.
        similarity: Jaccard similarity of the parameter names (1.0: the same).
        new_in_release: Whether ``new_where`` is new in NEW.
        params: How the parameters changed.
        old_via: When OLD's ``old_where`` is a re-export: the definition it re-exports.
    """

    old_where: str
    new_where: str
    similarity: float
    new_in_release: bool
    params: ParamDiff
    old_via: str = ""


def find_moves(surface: Surface, old: str, new: str, where: str, limit: int = 3) -> list[Move]:
    """Candidate new homes of a definition OLD has at ``where`` and NEW lacks.

    Args:
        surface: The engine's surface.
        old: The older release.
        new: The newer release.
        where: OLD's ``"module:qualname"``.
        limit: How many candidates to keep.

    Returns:
        The best candidates first: real definitions before re-exports, definitions new in NEW
        before old ones, then by parameter similarity. When some candidate's parameters are
        alike (:data:`ALIKE`), callables with unlike parameters are left out; when such a
        candidate is new in NEW, the namesakes OLD already had are left out.
    """
    found = surface.resolve(old, where)
    if found is None:
        return []
    real_where, d_old = found  # a re-export is compared by what it re-exports
    via = real_where if real_where != where else ""
    qual = where.partition(":")[2]
    name = qual.rpartition(".")[2]
    owner = qual.rpartition(".")[0]
    old_defs = surface.definitions(old)
    module = where.partition(":")[0]
    if owner and surface.lookup(new, f"{module}:{owner}") is not None:
        return []  # a method gone from a class that is still there: removed, not moved
    out = []
    for cand, d_new in surface.definitions(new).items():
        if cand == where or not d_new.runtime:
            continue
        c_qual = cand.partition(":")[2]
        c_name = c_qual.rpartition(".")[2]
        if c_name.lstrip("_") != name.lstrip("_"):
            continue
        c_owner = c_qual.rpartition(".")[0]
        if bool(owner) != bool(c_owner):
            continue
        if owner and c_owner.rpartition(".")[2] != owner.rpartition(".")[2]:
            # a method of a class that is gone: a class of the same name, or one new in NEW
            if f"{cand.partition(':')[0]}:{c_owner}" in old_defs:
                continue
        if d_new.kind == "import" and d_new.src and surface.lookup(new, d_new.src) is not None:
            continue  # a re-export of a recorded definition: that definition is the candidate
        sim = _similarity(d_old, d_new) if d_old.kind in _CALLABLE and d_new.kind in _CALLABLE else 0.0
        fresh = cand not in old_defs
        out.append(Move(where, cand, sim, fresh, param_diff(cand, d_old.params, d_new.params, old_where=where), via))

    def rank(m: Move) -> tuple[bool, bool, float, float, str]:
        d = surface.lookup(new, m.new_where)
        closeness = difflib.SequenceMatcher(a=where, b=m.new_where).ratio()  # the likest class / module name
        return (d is not None and d.kind == "import", not m.new_in_release, -m.similarity, -closeness, m.new_where)

    out.sort(key=rank)
    if any(m.similarity >= ALIKE for m in out):
        out = [m for m in out if m.similarity >= ALIKE or not _callable_pair(surface, old, new, m)]
    if any(m.new_in_release and m.similarity >= ALIKE for m in out):
        out = [m for m in out if m.new_in_release]  # a new definition beats a namesake that was already there
    return out[:limit]


def _callable_pair(surface: Surface, old: str, new: str, m: Move) -> bool:
    a, b = surface.resolve(old, m.old_where), surface.lookup(new, m.new_where)
    return a is not None and b is not None and a[1].kind in _CALLABLE and b.kind in _CALLABLE


@dataclass
class FactChange:
    """A version fact to revisit for NEW.

    Attributes:
        what: The fact's key.
        where: Its ``"module:qualname"``.
        kind: ``"symbol"`` or ``"param"``.
        param: Its parameter (``"param"`` facts).
        versions: Its specifier today.
        old_present: The probe in OLD.
        new_present: The probe in NEW.
        claims_old: What ``versions`` says for OLD.
        claims_new: What ``versions`` says for NEW.
        draft: The drafted specifier (``None``: edit by hand).
    """

    what: str
    where: str
    kind: str
    param: str
    versions: str
    old_present: bool
    new_present: bool
    claims_old: bool
    claims_new: bool
    draft: str | None

    @property
    def needs_edit(self) -> bool:
        """Whether ``versions`` is wrong for NEW."""
        return self.claims_new != self.new_present


@dataclass
class ReleaseDiff:
    """Everything :func:`diff_releases` found.

    Attributes:
        engine: The engine.
        old: The older release.
        new: The newer release.
        facts: Facts whose probe changes or whose ``versions`` disagree with NEW.
        suggestions: Drafted new ``Fact(...)`` lines.
        moves: Moves of fact symbols.
        params: Parameter changes of fact symbols (in both releases).
        all_added: With ``all_defs``: definitions only NEW has (imports aside).
        all_removed: With ``all_defs``: definitions only OLD has (imports aside).
        all_added_imports: With ``all_defs``: imported names only NEW has.
        all_removed_imports: With ``all_defs``: imported names only OLD has.
        all_moves: With ``all_defs``: moves of any removed function / class.
        all_params: With ``all_defs``: parameter changes of every definition in both.
        modules_added: With ``all_defs``: modules only NEW has.
        modules_removed: With ``all_defs``: modules only OLD has.
    """

    engine: str
    old: str
    new: str
    facts: list[FactChange] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    params: list[ParamDiff] = field(default_factory=list)
    all_added: list[str] = field(default_factory=list)
    all_removed: list[str] = field(default_factory=list)
    all_added_imports: list[str] = field(default_factory=list)
    all_removed_imports: list[str] = field(default_factory=list)
    all_moves: list[Move] = field(default_factory=list)
    all_params: list[ParamDiff] = field(default_factory=list)
    modules_added: list[str] = field(default_factory=list)
    modules_removed: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return dataclasses.asdict(self)


def _fact_line(key: str, versions: str, where: str, kind: str = "symbol", param: str = "") -> str:
    args = [json.dumps(key), json.dumps(versions), json.dumps(where)]
    if kind != "symbol":
        args += [json.dumps(kind), json.dumps(param)]
    return f"Fact({', '.join(args)}),"


def diff_releases(surface: Surface, facts: Iterable[Any], old: str, new: str, all_defs: bool = False) -> ReleaseDiff:
    """Compare two recorded releases against an engine's version facts.

    Args:
        surface: The engine's surface (both releases recorded).
        facts: The engine's ``Fact`` objects (``.key``, ``.versions``, ``.where``,
            ``.kind``, ``.param``, ``.holds_for``).
        old: The older release.
        new: The newer release.
        all_defs: Also compare every recorded definition (``--all``).

    Returns:
        The report.
    """
    out = ReleaseDiff(surface.engine, old, new)
    facts = [f for f in facts if f.kind != "behaviour" and f.where]
    bound = separating_bound(old, new) if Version(old) < Version(new) else new
    v_old, v_new = Version(old), Version(new)
    for f in facts:
        p_old = surface.probe(old, f.where, f.kind, f.param)
        p_new = surface.probe(new, f.where, f.kind, f.param)
        c_old, c_new = f.holds_for(v_old), f.holds_for(v_new)
        if p_old != p_new or c_new != p_new:
            later = (r for r in surface.releases if Version(r) > v_new)
            next_change = next((r for r in later if surface.probe(r, f.where, f.kind, f.param) != p_new), None)
            history = [r for r in surface.releases if Version(r) <= v_old]
            draft = draft_specifier(f.versions, old, new, p_new, next_change=next_change, history=history)
            out.facts.append(FactChange(f.key, f.where, f.kind, f.param, f.versions, p_old, p_new, c_old, c_new, draft))

    symbols = sorted({f.where for f in facts if ":" in f.where})
    covered = {(f.where, f.param) for f in facts if f.kind == "param"}
    named = {f.where for f in facts if f.kind == "symbol"}
    for where in symbols:
        d_old, d_new = surface.lookup(old, where), surface.lookup(new, where)
        if d_old is not None and d_old.runtime and (d_new is None or not d_new.runtime):
            moves = find_moves(surface, old, new, where)
            out.moves += moves
            if moves and moves[0].new_where not in named and surface.lookup(new, moves[0].new_where).kind != "import":  # type: ignore[union-attr]
                m = moves[0]
                place = m.new_where.partition(":")[0].rsplit(".", 1)[-1]
                out.suggestions.append(_fact_line(f"{_final(m.new_where)}@{place}", f">={bound}", m.new_where))
        if d_old is not None and d_new is not None and (d_old.params is not None or d_new.params is not None):
            pd = param_diff(where, d_old.params, d_new.params)
            if pd.changed:
                out.params.append(pd)
                symbol = next((f.symbol for f in facts if f.kind == "symbol" and f.where == where), _final(where))
                for p in pd.added + [b for _, b in pd.renamed]:
                    if (where, p) not in covered and p not in MARKERS:
                        out.suggestions.append(_fact_line(f"{symbol}.{p.lstrip('*')}", f">={bound}", where, "param", p))

    if all_defs:
        a, b = surface.definitions(old), surface.definitions(new)
        added, removed = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        out.all_added = [w for w in added if b[w].kind != "import"]
        out.all_removed = [w for w in removed if a[w].kind != "import"]
        out.all_added_imports = [w for w in added if b[w].kind == "import"]
        out.all_removed_imports = [w for w in removed if a[w].kind == "import"]
        for where in out.all_removed:
            if a[where].kind in _CALLABLE:
                out.all_moves += [m for m in find_moves(surface, old, new, where, limit=1) if m.new_in_release]
        for where in sorted(set(a) & set(b)):
            if a[where].params is not None or b[where].params is not None:
                pd = param_diff(where, a[where].params, b[where].params)
                if pd.changed:
                    out.all_params.append(pd)
        ma, mb = set(surface.modules(old)), set(surface.modules(new))
        out.modules_added, out.modules_removed = sorted(mb - ma), sorted(ma - mb)
    return out


# -- text --------------------------------------------------------------------------------------
def _yes(p: bool) -> str:
    return "present" if p else "absent"


def _rename(a: str, b: str) -> str:
    return f"{a} -> {b}" + ("" if _alike(a, b) else " (same position, unlike names: maybe removed + added)")


def _param_line(pd: ParamDiff) -> str:
    bits = [f"+{p}" for p in pd.added] + [f"-{p}" for p in pd.removed] + [_rename(a, b) for a, b in pd.renamed]
    bits += [f"{p} now keyword-only" for p in pd.now_kwonly] + [f"{p} no longer keyword-only" for p in pd.now_positional]
    return ", ".join(bits)


def _move_line(m: Move) -> str:
    how = "new in this release" if m.new_in_release else "already there before"
    via = f" (a re-export of {m.old_via})" if m.old_via else ""
    alike = f"parameters {m.similarity:.0%} alike" + (" - same name only?" if m.similarity < ALIKE else "")
    line = f"{m.old_where}{via}  moved to  {m.new_where}  ({how}; {alike})"
    if m.params.changed:
        line += f"; parameters: {_param_line(m.params)}"
    return line


def render(d: ReleaseDiff) -> str:
    """The report as readable text."""
    lines = [f"{d.engine} {d.old} -> {d.new}", ""]
    edits = sum(c.needs_edit for c in d.facts)
    lines.append(f"(a) version facts whose probe changes, or that disagree with the new release ({edits} to edit)")
    for c in sorted(d.facts, key=lambda c: not c.needs_edit):
        head = f"  - {c.what!r} ({c.kind}{': ' + c.param if c.param else ''} at {c.where})"
        lines.append(head)
        lines.append(f"      {d.old}: {_yes(c.old_present)}, {d.new}: {_yes(c.new_present)}; versions {c.versions!r} claims {d.new} {_yes(c.claims_new)}")
        if c.claims_old != c.old_present:
            lines.append(f"      (the fact is already wrong for {d.old})")
        if not c.needs_edit:
            lines.append("      no edit needed")
        elif c.draft is None:
            lines.append("      draft: no simple edit; review by hand")
        else:
            lines.append(f"      draft: versions={c.draft!r}")
    if not d.facts:
        lines.append("  (none)")
    lines += ["", "    suggested new facts:"]
    lines += [f"      {s}" for s in d.suggestions] or ["      (none)"]
    lines += ["", "(b) moves of fact symbols"]
    lines += [f"  - {_move_line(m)}" for m in d.moves] or ["  (none)"]
    lines += ["", "(c) renamed parameters of fact symbols"]
    renames = [f"  - {pd.where}: {_rename(a, b)}" for pd in d.params for a, b in pd.renamed]
    renames += [f"  - {m.old_where} -> {m.new_where}: {_rename(a, b)}" for m in d.moves for a, b in m.params.renamed]
    lines += renames or ["  (none)"]
    lines += ["", "(d) parameter changes of fact symbols"]
    lines += [f"  - {pd.where}: {_param_line(pd)}" for pd in d.params] or ["  (none)"]
    if d.all_added or d.all_removed or d.all_added_imports or d.all_removed_imports or d.all_params or d.modules_added or d.modules_removed:
        lines += ["", "(e) every recorded definition"]
        lines += [f"  + module {m}" for m in d.modules_added] + [f"  - module {m}" for m in d.modules_removed]
        lines += [f"  moved: {_move_line(m)}" for m in d.all_moves]
        lines += [f"  + {w}" for w in d.all_added] + [f"  - {w}" for w in d.all_removed]
        if d.all_added_imports or d.all_removed_imports:
            lines.append(f"  imports: {len(d.all_added_imports)} added, {len(d.all_removed_imports)} removed (listed by --json)")
        lines += [f"  ~ {pd.where}: {_param_line(pd)}" for pd in d.all_params]
    return "\n".join(lines) + "\n"


# -- command line ------------------------------------------------------------------------------
def _ensure(engine: str, releases: Sequence[str], path: pathlib.Path, snapshot: bool) -> Surface:
    """Load the surface, snapshotting any release it lacks first."""
    surface = Surface.load(engine, path) if path.exists() else None
    missing = [r for r in releases if surface is None or not surface.has_release(r)]
    if missing:
        if not snapshot:
            raise SystemExit(f"{engine} {', '.join(missing)} not recorded in {path}: run tools/surface_snapshot.py {engine} {' '.join(missing)}")
        from surface_snapshot import SurfaceStore, snapshot_release

        store = SurfaceStore(engine, path)
        for r in missing:
            print(f"snapshotting {engine} {r} ...", file=sys.stderr)
            store.add(snapshot_release(engine, r))
            store.save()
        surface = Surface.load(engine, path)
    assert surface is not None
    return surface


def _guess_engine(old: str, new: str) -> str:
    found = [e for e in ("vllm", "sglang") if surface_path(e).exists() and Surface.load(e).has_release(old)]
    if len(found) != 1:
        raise SystemExit("cannot tell the engine from the releases: pass --engine vllm|sglang")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--engine", choices=("vllm", "sglang"))
    ap.add_argument("--all", action="store_true", help="also compare every recorded definition")
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    ap.add_argument("--data", type=pathlib.Path, help="the surface file (default tests/engines/data/<engine>_surface.json)")
    ap.add_argument("--no-snapshot", action="store_true", help="fail instead of snapshotting a missing release")
    args = ap.parse_args(argv)
    engine = args.engine or _guess_engine(args.old, args.new)
    surface = _ensure(engine, [args.old, args.new], args.data or surface_path(engine), not args.no_snapshot)

    from moecompat.engines import ENGINES

    d = diff_releases(surface, ENGINES[engine].facts, str(Version(args.old)), str(Version(args.new)), all_defs=args.all)
    print(json.dumps(d.as_json(), indent=1) if args.json else render(d), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
