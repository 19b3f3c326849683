"""Every release of an engine in a range, with the torch release it pins, asked of pip.

    python tools/release_torch_pins.py sglang ">=0.4.7,<0.5.24" > pins.txt

For tests/engines/releases.toml: one line ``VERSION TORCH`` per release (``-`` when it pins none).
Uses ``pip index versions`` and ``pip install --dry-run --no-deps --report`` (fast-deps: only the
wheel's METADATA is read, not the whole wheel), so it downloads no engine.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version


def versions(engine: str, spec: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", engine], capture_output=True, text=True,
                         check=True).stdout
    listed = re.search(r"Available versions: (.*)", out)
    if not listed:
        raise SystemExit(f"pip index versions {engine}: no versions in {out!r}")
    s = SpecifierSet(spec)
    return sorted((v for v in listed.group(1).split(", ") if s.contains(Version(v))), key=Version)


def torch_pin(engine: str, version: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-deps", "--ignore-installed",
                        "--use-feature=fast-deps", "--report", report.name, f"{engine}=={version}"],
                       check=True, capture_output=True)
        meta = json.loads(pathlib.Path(report.name).read_text())["install"][0]["metadata"]
    for line in meta.get("requires_dist", []):
        req = Requirement(line)
        if req.name == "torch":
            pins = [s.version for s in req.specifier if s.operator == "=="]
            if pins:
                return pins[0]
    return "-"


if __name__ == "__main__":
    engine, spec = sys.argv[1:3]
    for v in versions(engine, spec):
        print(v, torch_pin(engine, v), flush=True)
