"""tools/check_dist.py fails on a wheel or sdist that lacks what a typed package needs, and passes
the real build (built by the nox ``package`` session; here from small hand-made archives)."""

from __future__ import annotations

import io
import tarfile
import zipfile

from tools import check_dist

GOOD_META = """Metadata-Version: 2.4
Name: moecompat
Version: 0.1.0
License-Expression: Apache-2.0
License-File: LICENSE
Project-URL: Source, https://example.org/moecompat
Classifier: Programming Language :: Python :: 3.10
Classifier: Programming Language :: Python :: 3.11
Classifier: Programming Language :: Python :: 3.12
Classifier: Typing :: Typed
Requires-Dist: torch>=2.5

See [the docs](https://example.org/docs/index.md).
"""


def _wheel(tmp_path, meta=GOOD_META, typed=True, license_file=True):
    path = tmp_path / "moecompat-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("moecompat/__init__.py", "")
        if typed:
            zf.writestr("moecompat/py.typed", "")
        if license_file:
            zf.writestr("moecompat-0.1.0.dist-info/licenses/LICENSE", "Apache License")
        zf.writestr("moecompat-0.1.0.dist-info/METADATA", meta)
    return path


def _sdist(tmp_path, names=("LICENSE", "moecompat/py.typed", "pyproject.toml")):
    path = tmp_path / "moecompat-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for n in names:
            info = tarfile.TarInfo(f"moecompat-0.1.0/{n}")
            info.size = 0
            tf.addfile(info, io.BytesIO(b""))
    return path


def test_a_complete_build_passes(tmp_path):
    _wheel(tmp_path), _sdist(tmp_path)
    assert check_dist.main(["check_dist", str(tmp_path)]) == 0


def test_each_missing_piece_is_named(tmp_path):
    bad = GOOD_META.replace("Classifier: Typing :: Typed\n", "").replace("License-Expression: Apache-2.0\n", "") \
        .replace("Requires-Dist: torch>=2.5", "Requires-Dist: importlib-metadata>=4.6") \
        .replace("(https://example.org/docs/index.md)", "(docs/index.md)")
    problems = check_dist.check_wheel(_wheel(tmp_path, bad, typed=False, license_file=False))
    text = "\n".join(problems)
    for fragment in ("py.typed", "licenses/LICENSE", "License-Expression", "Typing :: Typed", "importlib-metadata",
                     "relative links"):
        assert fragment in text, (fragment, problems)
    assert check_dist.check_sdist(_sdist(tmp_path, names=("pyproject.toml",))) == [
        "sdist: no LICENSE", "sdist: no moecompat/py.typed"]
