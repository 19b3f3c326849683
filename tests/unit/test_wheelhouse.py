"""moecompat.wheelhouse: the pip command lines (no network), argument checks, manifest/README."""

from __future__ import annotations

import json
import sys

import pytest

from moecompat import wheelhouse as wh
from moecompat.errors import InvalidInputError


def test_pip_download_argv_targets_the_cluster_interpreter(tmp_path):
    argv = wh.pip_download_argv(["sglang==0.5.23", "moecompat==0.1.0"], tmp_path, "3.12",
                                ("manylinux_2_28_x86_64", "manylinux2014_x86_64"), python="/usr/bin/python3")
    assert argv == ["/usr/bin/python3", "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                    "-d", str(tmp_path), "sglang==0.5.23", "moecompat==0.1.0"]


def test_dry_run_builds_moecompat_from_this_checkout_and_downloads_with_it(tmp_path):
    dest = tmp_path / "wh"
    commands = wh.build_wheelhouse("vllm", "0.24.0", dest, "3.11", extra=("torch==2.11.0",), dry_run=True)
    assert not dest.exists()  # a dry run writes nothing
    build, download = commands
    assert build[:5] == [sys.executable, "-m", "pip", "wheel", "--no-deps"] and build[-1] == str(wh._PROJECT_ROOT)
    assert download[:4] == [sys.executable, "-m", "pip", "download"] and "--only-binary=:all:" in download
    assert download[download.index("--python-version") + 1] == "3.11"
    assert [download[i + 1] for i, a in enumerate(download) if a == "--platform"] == list(wh.DEFAULT_PLATFORMS)
    tail = download[download.index("-d"):]
    assert tail[:2] == ["-d", str(dest)]
    assert tail[2:4] == ["vllm==0.24.0", "torch==2.11.0"] and tail[4].endswith(".whl") and "moecompat-" in tail[4]


def test_without_moecompat_only_the_engine(tmp_path):
    (download,) = wh.build_wheelhouse("sglang", "0.5.23", tmp_path, with_moecompat=False, pip_args=("--index-url", "https://x.invalid/simple"),
                                      dry_run=True)
    assert download[-3:] == ["-d", str(tmp_path), "sglang==0.5.23"]
    assert download[download.index("--index-url") + 1] == "https://x.invalid/simple"


@pytest.mark.parametrize(("kwargs", "argument"), [
    ({"engine": "sglang; rm -rf /"}, "engine"),
    ({"engine": ""}, "engine"),
    ({"version": "latest"}, "version"),
    ({"python_version": "312"}, "python_version"),
    ({"platforms": "manylinux_2_28_x86_64"}, "platforms"),  # a bare string, not a list of tags
    ({"platforms": ()}, "platforms"),
])
def test_bad_arguments_name_themselves(tmp_path, kwargs, argument):
    args = {"engine": "sglang", "version": "0.5.23", "dest": tmp_path / "wh", **kwargs}
    with pytest.raises(InvalidInputError, match=f"^{argument}: expected"):
        wh.build_wheelhouse(**args, dry_run=True)
    assert not (tmp_path / "wh").exists()


def test_main_dry_run_prints_the_commands(capsys, tmp_path):
    assert wh.main(["sglang", "0.5.23", "--dest", str(tmp_path / "wh"), "--python-version", "3.10",
                    "--platform", "manylinux_2_28_x86_64", "--no-moecompat", "--dry-run"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and " download --only-binary=:all: --python-version 3.10 --implementation cp " in out[0]
    assert out[0].endswith(f"--platform manylinux_2_28_x86_64 -d {tmp_path / 'wh'} sglang==0.5.23")


def test_main_reports_bad_input_as_exit_2(capsys):
    assert wh.main(["sglang", "not-a-version", "--dry-run"]) == 2
    assert "error: version: expected" in capsys.readouterr().err


def test_manifest_and_readme_describe_the_folder(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"abc")
    (tmp_path / "manifest.json").write_text("{}")  # an old one is not listed in the new one
    m = wh._manifest(tmp_path, {"engine": "sglang"})
    assert m["engine"] == "sglang"
    assert m["files"] == [{"name": "a-1.0-py3-none-any.whl", "size": 3,
                           "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]
    json.dumps(m)
    text = wh._readme("sglang", "0.5.23", "3.12", wh.DEFAULT_PLATFORMS, ("torch==2.11.0",), 1)
    assert 'pip install --no-index --find-links "$PWD" "sglang==0.5.23" moecompat "torch==2.11.0"' in text
    assert "CPython 3.12" in text and "MOECOMPAT_OFFLINE=1 nox -s gpu_sglang -- 0.5.23" in text
    alone = wh._readme("sglang", "0.5.23", "3.12", wh.DEFAULT_PLATFORMS, (), 1, with_moecompat=False)
    assert 'pip install --no-index --find-links "$PWD" "sglang==0.5.23"\n' in alone and "moecompat 0" not in alone
