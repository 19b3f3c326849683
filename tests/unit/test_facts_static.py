"""Every engine version fact against the API snapshot of every recorded release.

The snapshots (``tests/engines/data/<engine>_api.json``) are read from the released wheels by
``tools/snapshot_api.py``; the installed-package matrix (nox ``surface_*``) re-checks the facts
of the release it installs by importing it.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from packaging.version import Version

from moecompat.engines import ENGINES

DATA = pathlib.Path(__file__).resolve().parents[1] / "engines" / "data"

CASES = []
for _name, _engine in ENGINES.items():
    path = DATA / f"{_name}_api.json"
    if not path.exists():
        continue
    for _version, _snap in json.loads(path.read_text()).items():
        for _fact in _engine.facts:
            if _fact.kind != "behaviour":
                CASES.append(pytest.param(_name, _version, _fact, _snap, id=f"{_name}-{_version}-{_fact.what}"))


def test_snapshots_exist():
    assert (DATA / "vllm_api.json").exists()


@pytest.mark.parametrize(("engine", "version", "fact", "snap"), CASES)
def test_fact_matches_release(engine, version, fact, snap):
    assert fact.where in snap, f"snapshot lacks {fact.where}: re-run tools/snapshot_api.py"
    params = snap[fact.where]
    present = params is not None and (fact.kind == "symbol" or fact.param in params)
    expected = fact.holds_for(Version(version))
    assert present == expected, (
        f"{engine} {version}: {fact.what!r} claims {fact.versions}, release {'has' if present else 'lacks'} it"
    )
