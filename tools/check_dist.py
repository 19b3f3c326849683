"""Check a built wheel and sdist carry what a typed PyPI package needs.

    python tools/check_dist.py dist/

Fails (exit 1, one line per problem) unless the wheel holds ``moecompat/py.typed`` and the
license file, its metadata has an SPDX ``License-Expression``, ``License-File``, Project-URLs,
a classifier per supported Python and ``Typing :: Typed``, no ``importlib-metadata`` requirement,
and a long description without relative links (they break on the package index); and unless the
sdist holds the license, ``py.typed`` and ``pyproject.toml``.
"""

from __future__ import annotations

import email.parser
import pathlib
import re
import sys
import tarfile
import zipfile

PYTHONS = ("3.10", "3.11", "3.12")


def check_wheel(path: pathlib.Path) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    if "moecompat/py.typed" not in names:
        problems.append("wheel: no moecompat/py.typed")
    if not any(re.search(r"\.dist-info/licenses/LICENSE$", n) for n in names):
        problems.append("wheel: no .dist-info/licenses/LICENSE")
    if meta.get("License-Expression") != "Apache-2.0":
        problems.append(f"metadata: License-Expression is {meta.get('License-Expression')!r}, not 'Apache-2.0'")
    if "LICENSE" not in (meta.get_all("License-File") or []):
        problems.append("metadata: no License-File: LICENSE")
    urls = meta.get_all("Project-URL") or []
    if not urls:
        problems.append("metadata: no Project-URL")
    classifiers = set(meta.get_all("Classifier") or [])
    for want in ("Typing :: Typed", *(f"Programming Language :: Python :: {v}" for v in PYTHONS)):
        if want not in classifiers:
            problems.append(f"metadata: no classifier {want!r}")
    if any(c.startswith("License ::") for c in classifiers):
        problems.append("metadata: a License classifier beside the SPDX expression (deprecated)")
    for req in meta.get_all("Requires-Dist") or []:
        if req.lower().startswith(("importlib-metadata", "importlib_metadata")):
            problems.append(f"metadata: requires {req} (the standard library has importlib.metadata)")
    body = meta.get_payload() or ""
    relative = re.findall(r"\]\((?!https?://|#)([^)]+)\)", body)
    if relative:
        problems.append(f"long description: relative links {relative} (they break on the package index)")
    return problems


def check_sdist(path: pathlib.Path) -> list[str]:
    with tarfile.open(path) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    return [f"sdist: no {want}" for want in ("LICENSE", "moecompat/py.typed", "pyproject.toml") if want not in names]


def main(argv: list[str]) -> int:
    dist = pathlib.Path(argv[1] if len(argv) > 1 else "dist")
    wheels, sdists = sorted(dist.glob("moecompat-*.whl")), sorted(dist.glob("moecompat-*.tar.gz"))
    if not wheels or not sdists:
        print(f"{dist}: needs one wheel and one sdist (python -m build)")
        return 1
    problems = check_wheel(wheels[-1]) + check_sdist(sdists[-1])
    for p in problems:
        print(p)
    if not problems:
        print(f"{wheels[-1].name} and {sdists[-1].name}: py.typed, license, URLs, classifiers and metadata ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
