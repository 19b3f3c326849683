"""tools/release_reqs.py: a release's own requirements read from its wheel (noxfile.py installs
SGLang 0.4.8-0.5.4 with them). The wheels here are built in tmp_path with Requires-Dist lines
copied from SGLang 0.4.8.post1's and 0.5.4's METADATA."""

from __future__ import annotations

import datetime
import zipfile

import pytest

from tools import release_reqs as rr

SGLANG_0_4_8_POST1 = [
    "aiohttp", "requests", "numpy", "IPython",
    'compressed-tensors; extra == "runtime-common"',
    'transformers==4.52.3; extra == "runtime-common"',
    'xgrammar==0.1.19; extra == "runtime-common"',
    'sglang[runtime_common]; extra == "srt"',
    'sgl-kernel==0.1.9; extra == "srt"',
    'torch==2.7.1; extra == "srt"',
    'torchvision==0.22.1; extra == "srt"',
    'flashinfer_python==0.2.6.post1; extra == "srt"',
    'sglang[runtime_common]; extra == "blackwell"',
    'torch==2.7.1; extra == "blackwell"',
    'torch; extra == "srt-hip"',
    'vllm==0.6.7.dev2; extra == "srt-hip"',
    'sglang[runtime_common]; extra == "srt-cpu"',
    'einops; extra == "srt-cpu"',
    'accelerate; extra == "test"',
    'pywin32; sys_platform == "win32"',
]
SGLANG_0_5_4 = ["IPython", "torch==2.8.0", "torchvision", "transformers==4.57.1", "sgl-kernel==0.3.16.post3",
                'grpcio==1.75.1', 'pytest; extra == "test"']
LINUX_311 = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux", "platform_system": "Linux",
             "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "platform_release": "", "platform_version": "",
             "implementation_version": "3.11.7"}


def _wheel(tmp_path, name, version, lines, when=(2025, 6, 26, 9, 21, 30)):
    path = tmp_path / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in lines)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "")
        z.writestr(zipfile.ZipInfo(f"{name}-{version}.dist-info/METADATA", date_time=when), meta)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return path


def _names(reqs):
    return [str(r) for r in reqs]


def test_srt_of_0_4_8_post1_as_pip_would_ask(tmp_path):
    wheel = _wheel(tmp_path, "sglang", "0.4.8.post1", SGLANG_0_4_8_POST1)
    lines = rr.requires_dist(wheel)
    assert lines == SGLANG_0_4_8_POST1
    reqs = rr.release_requirements("sglang", lines, ["srt"], exclude=["flashinfer-python"], environment=LINUX_311)
    assert _names(reqs) == ["aiohttp", "requests", "numpy", "IPython", "sgl-kernel==0.1.9", "torch==2.7.1",
                            "torchvision==0.22.1", "compressed-tensors", "transformers==4.52.3", "xgrammar==0.1.19"]
    assert rr.pinned_version(reqs, "torch") == "2.7.1"
    assert rr.pinned_version(reqs, "Transformers") == "4.52.3"
    assert rr.pinned_version(reqs, "compressed_tensors") is None  # unpinned
    assert rr.pinned_version(reqs, "vllm") is None  # not asked for


def test_base_only_and_platform_markers(tmp_path):
    reqs = rr.release_requirements("sglang", SGLANG_0_4_8_POST1, environment=LINUX_311)
    assert _names(reqs) == ["aiohttp", "requests", "numpy", "IPython"]
    windows = dict(LINUX_311, sys_platform="win32")
    assert "pywin32" in _names(rr.release_requirements("sglang", SGLANG_0_4_8_POST1, environment=windows))


def test_0_5_4_lists_everything_in_its_base_set(tmp_path):
    wheel = _wheel(tmp_path, "sglang", "0.5.4", SGLANG_0_5_4, when=(2025, 10, 24, 1, 2, 4))
    reqs = rr.release_requirements("sglang", rr.requires_dist(wheel), ["srt"], environment=LINUX_311)
    assert _names(reqs) == SGLANG_0_5_4[:-1]
    assert rr.pinned_version(reqs, "torch") == "2.8.0" and rr.pinned_version(reqs, "torchvision") is None
    assert rr.build_date(wheel) == datetime.datetime(2025, 10, 24, 1, 2, 4, tzinfo=datetime.timezone.utc)


def test_ranges_are_not_pins():
    reqs = rr.release_requirements("x", ["torch>=2.7,<2.9", "triton==3.*", "numpy===1.26.4"], environment=LINUX_311)
    assert [rr.pinned_version(reqs, n) for n in ("torch", "triton", "numpy")] == [None, None, "1.26.4"]


def test_a_wheel_without_metadata_is_refused(tmp_path):
    path = tmp_path / "bad-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("bad/__init__.py", "")
    with pytest.raises(ValueError, match="METADATA"):
        rr.requires_dist(path)
