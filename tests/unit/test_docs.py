"""The docs cannot go stale or miss a public name: the CLI page is the parser's output, every
public name has an API entry, no docstring carries a Sphinx role, the nav lists every page."""

from __future__ import annotations

import pathlib
import re

import moecompat as mc
from tools import gen_cli_docs

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
NOT_RENDERED = {"__version__"}  # a string; `moecompat --version` and the API page's intro show it


def test_cli_page_is_the_parsers_output():
    assert (DOCS / "cli.md").read_text() == gen_cli_docs.render(), "docs/cli.md is stale: python tools/gen_cli_docs.py"


def test_every_public_name_has_an_api_entry():
    entries = set()
    for page in DOCS.glob("*.md"):
        entries |= set(re.findall(r"^::: (moecompat[\w.]*)", page.read_text(), re.M))
    missing = [n for n in mc.__all__ if n not in NOT_RENDERED and f"moecompat.{n}" not in entries]
    assert not missing, f"public names without a '::: moecompat.NAME' entry in docs/: {missing}"
    unknown = [e for e in entries if not _resolves(e)]
    assert not unknown, f"API entries that name nothing: {unknown}"


def _resolves(dotted: str) -> bool:
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj|ref|py:\w+):`")


def test_no_sphinx_roles_in_the_package():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "moecompat").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if SPHINX_ROLE.search(line)]
    assert not hits, f"Sphinx roles render literally with mkdocstrings: {hits}"


def test_the_checker_sees_a_role():
    assert SPHINX_ROLE.search("see :func:`moecompat.fused_experts`")


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = [p.name for p in DOCS.glob("*.md")]
    assert [p for p in pages if p not in nav] == []
