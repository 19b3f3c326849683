"""tests/engines/releases.toml (every engine release, with why one is not run) and the status
tools/compat_table.py gives each release from it and the recorded runs."""

from __future__ import annotations

import pathlib

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from packaging.version import Version

from tools import compat_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
RELEASES = tomllib.loads((ROOT / "tests/engines/releases.toml").read_text())
ENVS = tomllib.loads((ROOT / "tests/engines/envs.toml").read_text())


def test_every_matrix_release_is_listed_and_the_range_is_whole():
    for engine, first, last in (("vllm", "0.6.0", "0.33.0"), ("sglang", "0.4.7", "0.5.23")):
        listed = sorted(RELEASES[engine]["releases"], key=Version)
        assert listed[0] == first and listed[-1] == last, (engine, listed[0], listed[-1])
        assert set(ENVS[engine]["versions"]) <= set(listed), engine
        assert set(ENVS[engine]["gpu"]) <= set(listed), engine


def _run(passed=76, failed=0, torch="2.7.1+cu126"):
    return {"tests": {"passed": passed, "failed": failed, "skipped": 0}, "failures": ["x"] if failed else [], "torch": torch}


def test_statuses_and_reasons():
    table = {
        "minor_parts": 3, "gpu_torch": "2.11",
        "releases": {"0.4.8": "2.7.1", "0.4.8.post1": "2.7.1", "0.4.9.post6": "2.7.1", "0.5.11": "2.11.0",
                     "0.5.12": "2.11.0", "0.5.12.post1": "2.11.0", "0.5.13": "2.11.0", "0.5.20": "2.13.0"},
        "cpu": [{"versions": ">=0.4.9,<0.4.10", "reason": "imports sgl_kernel on the MoE path"}],
        "gpu": [{"versions": "==0.5.13", "reason": "the GPU lease ran out"}],
    }
    rows = {v: (cpu, gpu) for v, _, cpu, gpu in compat_table.release_rows(
        "sglang", table, {"0.4.8.post1": _run(), "0.5.12.post1": _run(70, 2), "0.4.9.post6": _run(0, 77)},
        {"0.5.12": "128/128 cases (H100)"})}
    assert list(rows) == ["0.4.8", "0.4.8.post1", "0.4.9.post6", "0.5.11", "0.5.12", "0.5.12.post1", "0.5.13", "0.5.20"]
    assert rows["0.4.8.post1"] == ("ok: 76 passed, 0 failed (torch 2.7.1+cu126)", "not run: pins torch 2.7, the GPU machine has 2.11")
    assert rows["0.4.8"][0] == "not run: same minor as 0.4.8.post1 which ran"
    assert rows["0.4.9.post6"][0] == ("impossible: imports sgl_kernel on the MoE path "
                                      "(its run: 0 passed, 77 failed (torch 2.7.1+cu126))")
    assert rows["0.5.12.post1"] == ("failed: 70 passed, 2 failed (torch 2.7.1+cu126)", "not run: same minor as 0.5.12 which ran")
    assert rows["0.5.12"] == ("not run yet", "128/128 cases (H100)")  # a failed run is no "same minor which ran"
    assert rows["0.5.13"][1] == "not run: the GPU lease ran out"
    assert rows["0.5.11"][1] == "not run yet (pins torch 2.11.0, as the GPU machine)"
    assert rows["0.5.20"][1] == "not run: pins torch 2.13, the GPU machine has 2.11; no torch 2.13 carried there yet (docs/gpu.md)"


def test_a_release_whose_torch_was_carried_onto_the_gpu_machine_says_so():
    table = {"minor_parts": 2, "gpu_torch": "2.11",
             "releases": {"0.26.0": "2.11.0", "0.27.0": "2.13.0", "0.27.1": "2.13.0", "0.28.0": "2.13.0",
                          "0.33.0": "2.14.0"}}
    rows = {v: gpu for v, _, _, gpu in compat_table.release_rows(
        "vllm", table, {}, {"0.26.0": "135/135 cases (H200)", "0.27.1": "135/135 cases (H200)"})}
    assert rows["0.27.1"] == "135/135 cases (H200)"
    assert rows["0.28.0"] == ("not run: pins torch 2.13, the GPU machine has 2.11; carrying torch 2.13 there works "
                              "(0.27.1 ran, docs/gpu.md); not carried for this one yet")
    assert rows["0.33.0"] == "not run: pins torch 2.14, the GPU machine has 2.11; no torch 2.14 carried there yet (docs/gpu.md)"  # 2.14 was never carried
    assert rows["0.27.0"] == "not run: same minor as 0.27.1 which ran"


def test_the_page_lists_every_release(tmp_path):
    out = tmp_path / "compat.md"
    assert compat_table.main(str(ROOT / "docs/results"), str(out), str(ROOT / "tests/engines/releases.toml")) == 0
    text = out.read_text()
    for engine in ("vllm", "sglang"):
        for v in RELEASES[engine]["releases"]:
            assert f"\n| {v} | {RELEASES[engine]['releases'][v]} | " in text, (engine, v)
