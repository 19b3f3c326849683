"""The device bundle round trip (tools/device/bundle.py -> matrix.py): every GPU result of the
H200 matrix rests on releases rebuilt there byte for byte from deduplicated, XOR-delta'd,
split blobs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools" / "device"


def _release(base: pathlib.Path, name: str, payload: bytes, extra: str) -> pathlib.Path:
    rel = base / name
    (rel / "site" / "pkg").mkdir(parents=True)
    (rel / "site" / "pkg" / "__init__.py").write_text(f"X = {extra!r}\n")
    (rel / "site" / "pkg" / "big.so").write_bytes(payload)
    (rel / "site" / "pkg" / "same.txt").write_text("identical in every release\n")
    (rel / "engine").write_text("vllm\n")
    (rel / "env").write_text("LIB={rel}/site/lib:$HOME\n")
    return rel


def test_releases_come_back_byte_for_byte(tmp_path, monkeypatch):
    rng = __import__("random").Random(0)
    a = bytes(rng.getrandbits(8) for _ in range(300_000))
    b = bytearray(a)
    b[1000:1010] = b"0123456789"  # same path and size, a few bytes apart: stored as an XOR
    rels = [_release(tmp_path / "rel", "vllm-1.0", a, "a"), _release(tmp_path / "rel", "vllm-1.1", bytes(b), "b")]
    env = dict(os.environ, MATRIX_ROOT=str(tmp_path / "mc"), OUT=str(tmp_path / "out"))
    parts = tmp_path / "parts"
    subprocess.run([sys.executable, str(TOOLS / "bundle.py"), str(parts), *map(str, rels)], check=True, env=env,
                   capture_output=True)
    folders = sorted(parts.iterdir())
    assert folders and all((f / "manifest.json.xz").exists() for f in folders)
    assert all(name.name.startswith(("parts-", "manifest")) for f in folders for name in f.iterdir())
    for f in folders:  # --jobs 0: materialise, start no suite
        subprocess.run([sys.executable, str(TOOLS / "matrix.py"), "step", str(f), "--jobs", "0"], check=True, env=env,
                       capture_output=True)
    state = json.loads((tmp_path / "mc" / "state.json").read_text())
    assert {n: r["status"] for n, r in state["releases"].items()} == {"vllm-1.0": "ready", "vllm-1.1": "ready"}
    blobs = next(iter(state["manifests"].values()))["blobs"]
    assert sum(1 for meta in blobs.values() if meta["xor"]) == 2  # big.so and __init__.py: same size, other bytes
    for rel in rels:
        back = tmp_path / "mc" / "rel" / rel.name
        for p in rel.rglob("*"):
            if p.is_file():
                assert (back / p.relative_to(rel)).read_bytes() == p.read_bytes(), p
    # the env file's {rel} and $VAR, as the suite would see them
    sys.path.insert(0, str(TOOLS))
    monkeypatch.setenv("MATRIX_ROOT", str(tmp_path / "mc"))
    import importlib

    matrix = importlib.import_module("matrix")
    matrix = importlib.reload(matrix)
    got = matrix._env("vllm-1.1", tmp_path / "mc" / "rel" / "vllm-1.1")
    assert got["LIB"] == f"{tmp_path / 'mc' / 'rel' / 'vllm-1.1'}/site/lib:{os.environ['HOME']}"
    assert got["PYTHONPATH"].split(":")[0] == str(tmp_path / "mc" / "rel" / "vllm-1.1" / "site")


def test_the_room_kept_for_the_manifest_holds_the_final_manifest(tmp_path, monkeypatch):
    """Every part carries the whole manifest, whose chunk counts and completion parts are known only
    after the cut, so the room kept for it must be measured with those fields in place (22204
    blobs once outgrew the margin). Here the margin is 0 and the part is one byte short of a whole
    block beyond the final manifest: that fits only if the manifest measured before the cut is the
    final one to the byte."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import importlib
    import lzma

    bundle = importlib.reload(importlib.import_module("bundle"))
    rel = tmp_path / "rel" / "vllm-1.0"
    (rel / "site").mkdir(parents=True)
    (rel / "engine").write_text("vllm\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    n = 2000
    rng = __import__("random").Random(1)
    for p in [rel / "engine", *(rel / "site" / f"f{i}.py" for i in range(n))]:
        if not p.exists():  # sizes of 1 to 4 digits, as real files' are: the manifest is not one repeat
            p.write_text(f"{p.name}\n" * rng.randint(1, 800))
        # the compressed blobs, made here quickly (preset 0) instead of by the pool
        (cache / f"{bundle._sha(p)}.xz").write_bytes(lzma.compress(p.read_bytes(), preset=0))
    monkeypatch.setenv("BUNDLE_CACHE", str(cache))
    assert bundle.main([str(tmp_path / "parts"), str(rel)]) == 0
    (part,) = (tmp_path / "parts").iterdir()
    final = len((part / "manifest.json.xz").read_bytes())
    blocks = n + 100  # each blob takes whole 4 KiB blocks of a part: room for all of them, in one part
    monkeypatch.setattr(bundle, "MANIFEST_MARGIN", 0)
    monkeypatch.setattr(bundle, "PART", final + blocks * 4096 - 1)
    assert bundle.main([str(tmp_path / "parts"), str(rel)]) == 0
    (part,) = (tmp_path / "parts").iterdir()
    manifest = json.loads(lzma.decompress((part / "manifest.json.xz").read_bytes()))
    assert manifest["releases"][0]["complete_after_part"] == 1
    assert len(manifest["blobs"]) == n + 1 and all(m["chunks"] == 1 for m in manifest["blobs"].values())


def test_a_rerun_brings_its_environment_and_its_records(tmp_path, monkeypatch):
    """A release re-run after a fix of its carried environment (SGLang 0.5.22 and 0.5.23 on the H200:
    the first run's tokenizers could not import the engine) is recorded with the re-run's numerics
    mode, the re-run's records, and both pytest verdicts."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import importlib

    collect = importlib.reload(importlib.import_module("collect_matrix"))
    rel = tmp_path / "sglang-0.5.22"
    rel.mkdir()
    head = {"engine": "sglang", "version": "0.5.22", "gpu": "NVIDIA H200", "torch": "2.14.1+cu130"}
    first = {**head, "faithful_numerics": "unavailable: ImportError", "cases": [{"test": "a", "ok": True}]}
    again = {**head, "faithful_numerics": "sglang 0.5.22",
             "cases": [{"test": "a", "ok": True}, {"test": "b", "ok": True, "rel_err": 1e-3}]}
    (rel / "gpu.json").write_text(json.dumps(first))
    (rel / "gpu-rerun1.json").write_text(json.dumps(again))
    (rel / "pytest.log").write_text("1 passed, 134 errors in 10.89s\n")
    (rel / "pytest-rerun1.log").write_text("..\n135 passed, 1 warning in 243.41s (0:04:03)\n")
    data = collect.merge(rel)
    assert data["faithful_numerics"] == "sglang 0.5.22"
    assert sorted(c["test"] for c in data["cases"]) == ["a", "b"]
    assert [r.get("pytest") for r in data["runs"]] == ["1 passed, 134 errors in 10.89s",
                                                       "135 passed, 1 warning in 243.41s (0:04:03)"]
    assert data["runs"][1]["replaces_main_run_records"] is True


def test_sglang_releases_carry_the_tokenizers_their_transformers_takes(monkeypatch):
    """prep_release.py takes transformers and tokenizers from one row of tests/engines/envs.toml, so
    a release never carries a tokenizers its transformers refuses (0.5.22's 5.19.0 needs 0.23), and
    no package is pinned twice."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import importlib

    prep = importlib.reload(importlib.import_module("prep_release"))

    def names(reqs):
        return [r.split("==")[0].lower().replace("_", "-") for r in reqs]

    for version, tokenizers in {"0.5.17": "0.22.2", "0.5.21": "0.22.2", "0.5.22": "0.23.3", "0.5.23": "0.23.3"}.items():
        pins = prep._sglang_pins(version)
        assert f"tokenizers=={tokenizers}" in pins, (version, pins)
        both = names(prep.SGLANG_DEPS) + names(pins)
        assert len(both) == len(set(both)), version
