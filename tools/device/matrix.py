#!/usr/bin/env python3
"""Run the GPU suite for many engine releases on the lent GPU machine, in parallel, as their parts arrive.

There (the H200: no network, at most 64 MiB a call, warm for 30 s between calls), one call per
part written by ``tools/device/bundle.py``, carrying ``.gpu/parts/NNN``::

    python3 tools/device/matrix.py step .gpu/parts/NNN [--wait SECONDS] [--jobs N]

Each step copies the part's blobs into ``/tmp/mc``, materialises every release whose blobs are all
there (``/tmp/mc/rel/<name>``: ``site/`` first on ``PYTHONPATH``, ``wheels/`` installed into
``deps/``), and starts ``pytest tests/gpu --engine <engine>`` for it in its own process session,
so that it runs on while the next parts are carried (at most ``--jobs`` at a time: the cases are
small, the time goes to Triton compiles and Python). It then waits up to ``--wait`` seconds,
starting queued releases as others finish, and puts every result so far into ``$OUT/results.tar``
(doctor JSON, pytest log, per-case GPU JSON, one status line per release). The sources the suites
run are a copy taken at the first step, so a later call's fresh working tree cannot change a
running suite. ``python3 tools/device/matrix.py wait [--wait S]`` only waits and collects.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import pathlib
import shutil
import site
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(os.environ.get("MATRIX_ROOT", "/tmp/mc"))
BLOBS, OBJECTS, RELS, RESULTS, SRC = (ROOT / d for d in ("blobs", "objects", "rel", "results", "src"))
STATE = ROOT / "state.json"


def _state() -> dict:
    return json.loads(STATE.read_text()) if STATE.exists() else {"manifests": {}, "releases": {}}


def _save(state: dict) -> None:
    STATE.write_text(json.dumps(state, indent=1))


def _chunk(bundle: str, sha: str, k: int) -> pathlib.Path:
    return BLOBS / f"{bundle}-{sha}.xz.{k:03d}"


def _object(sha: str, manifest: dict) -> pathlib.Path:
    """The decompressed file of blob ``sha`` (XOR bases first), made once."""
    obj = OBJECTS / sha
    if obj.exists():
        return obj
    blobs = manifest["blobs"]
    meta = blobs[sha]
    data = b"".join(_chunk(manifest["bundle"], sha, k).read_bytes() for k in range(meta["chunks"]))
    data = lzma.decompress(data) if data else b""
    if meta["xor"]:
        base = _object(meta["xor"], manifest).read_bytes()
        data = (int.from_bytes(data, "little") ^ int.from_bytes(base, "little")).to_bytes(len(base), "little")
    tmp = obj.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.rename(obj)
    return obj


def _complete(rel: dict, manifest: dict) -> bool:
    blobs = manifest["blobs"]
    return all(_chunk(manifest["bundle"], sha, k).exists() for _, sha, _ in rel["files"]
               for k in range(blobs[sha]["chunks"]))


def _materialise(rel: dict, manifest: dict) -> pathlib.Path:
    dest = RELS / rel["name"]
    if dest.exists():
        shutil.rmtree(dest)
    blobs = manifest["blobs"]
    shas = {sha for _, sha, _ in rel["files"]}
    bases = {blobs[s]["xor"] for s in shas if blobs[s]["xor"]}
    with ThreadPoolExecutor(16) as pool:  # lzma releases the GIL
        list(pool.map(lambda s: _object(s, manifest), sorted(bases)))
        list(pool.map(lambda s: _object(s, manifest), sorted(shas - bases)))
    for path, sha, mode in rel["files"]:
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(OBJECTS / sha, target)  # the objects are never written again
        except OSError:
            shutil.copyfile(OBJECTS / sha, target)
        os.chmod(target, mode | 0o444)
    torch_site = dest / "torch-site"
    if torch_site.is_dir():
        # The carried torch finds its CUDA libraries beside it (rpath $ORIGIN/../../nvidia/...): the
        # device's serve where it carries none of its own.
        device_nvidia = next((pathlib.Path(p) / "nvidia" for p in site.getsitepackages()
                              if (pathlib.Path(p) / "nvidia").is_dir()), None)
        if device_nvidia is not None:
            (torch_site / "nvidia").mkdir(exist_ok=True)
            for lib in device_nvidia.iterdir():
                if not (torch_site / "nvidia" / lib.name).exists():
                    (torch_site / "nvidia" / lib.name).symlink_to(lib)
    wheels = sorted((dest / "wheels").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--target", str(dest / "deps"), *map(str, wheels)], check=True)
    return dest


def _env(name: str, dest: pathlib.Path) -> dict[str, str]:
    """The environment of a release's processes: its site first on PYTHONPATH, its own caches."""
    env = dict(os.environ)
    extra = dest / "env"
    if extra.exists():
        for line in extra.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = os.path.expandvars(v.strip().replace("{rel}", str(dest)))
    env.update(
        PYTHONPATH=":".join(str(p) for p in (dest / "torch-site", dest / "site", dest / "deps", SRC) if p.exists()),
        PYTHONUNBUFFERED="1",
        TRITON_CACHE_DIR=str(ROOT / "triton"),  # shared: identical kernels compile once
        VLLM_CACHE_ROOT=str(ROOT / "cache" / name),
        XDG_CACHE_HOME=str(ROOT / "cache" / name),
        TORCHINDUCTOR_CACHE_DIR=str(ROOT / "cache" / name / "inductor"),
    )
    return env


def _launch(rel: dict, dest: pathlib.Path) -> int:
    name, engine = rel["name"], rel["engine"]
    res = RESULTS / name
    res.mkdir(parents=True, exist_ok=True)
    env = _env(name, dest)
    script = (
        f"cd {SRC}; {sys.executable} -m moecompat doctor --json > {res}/doctor.json 2> {res}/doctor.log; "
        f"timeout 1500 {sys.executable} -m pytest tests/gpu --engine {engine} -p no:cacheprovider -q -rfE "
        f"--durations=5 --basetemp={ROOT / 'pt' / name} --gpu-results {res}/gpu.json > {res}/pytest.log 2>&1; "
        f"echo $? > {res}/rc"
    )
    proc = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc.pid


def _running(state: dict) -> list[str]:
    return [n for n, r in state["releases"].items() if r.get("status") == "running" and not (RESULTS / n / "rc").exists()]


def _advance(state: dict, jobs: int) -> None:
    for manifest, rel in ((m, r) for m in state["manifests"].values() for r in m["releases"]):
        r = state["releases"].setdefault(rel["name"], {"status": "waiting"})
        if r["status"] == "running" and (RESULTS / rel["name"] / "rc").exists():
            r["status"] = "done"
            r["rc"] = int((RESULTS / rel["name"] / "rc").read_text().strip() or -1)
            r["finished"] = time.time()
        if r["status"] == "waiting" and _complete(rel, manifest):
            t = time.time()
            try:
                _materialise(rel, manifest)
                r["status"] = "ready"
                r["materialise_s"] = round(time.time() - t, 1)
            except Exception as exc:  # reported, and the other releases go on
                r["status"] = "failed"
                r["error"] = repr(exc)
        if r["status"] == "ready" and len(_running(state)) < jobs:
            r["pid"] = _launch(rel, RELS / rel["name"])
            r["status"] = "running"
            r["started"] = time.time()
    _save(state)


def _collect(out: pathlib.Path, state: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "state.json").write_text(json.dumps(state["releases"], indent=1))
    with tarfile.open(out / "results.tar", "w") as tf:
        tf.add(RESULTS, arcname="results")
    now = time.time()
    for name, r in state["releases"].items():
        age = f"{now - r['started']:.0f}s" if "started" in r else ""
        tail = ""
        log = RESULTS / name / "pytest.log"
        if log.exists():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
            tail = lines[-1][:160] if lines else ""
        print(f"{name:22} {r['status']:8} {r.get('rc', '')!s:3} {age:6} {r.get('error', '')[:200]} {tail}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("verb", choices=["step", "wait", "spawn"])
    ap.add_argument("part", nargs="?", help="step: the part folder; spawn: the release")
    ap.add_argument("command", nargs="*", help="spawn: the command, run in the release's environment from the "
                    "sources' copy, in the background; {res} is the release's results folder")
    ap.add_argument("--wait", type=float, default=0.0, help="seconds to wait for running suites before returning")
    ap.add_argument("--jobs", type=int, default=4)
    args = ap.parse_args(argv)
    for d in (BLOBS, OBJECTS, RELS, RESULTS, ROOT / "pt"):
        d.mkdir(parents=True, exist_ok=True)
    if not SRC.exists():
        repo = pathlib.Path(__file__).resolve().parents[2]
        shutil.copytree(repo, SRC, ignore=shutil.ignore_patterns(".gpu", ".git", "out", "__pycache__", ".nox"))
    state = _state()
    t0 = time.time()
    if args.verb == "step":
        part = pathlib.Path(args.part)
        for f in part.iterdir():
            if f.name == "manifest.json.xz":
                manifest = json.loads(lzma.decompress(f.read_bytes()))
                state["manifests"][manifest["bundle"]] = manifest
            else:
                shutil.copyfile(f, BLOBS / f.name)
        print(f"part {part.name}: {sum(f.stat().st_size for f in part.iterdir()) / 2**20:.1f} MiB in {time.time() - t0:.1f}s")
    if args.verb == "spawn":
        name = args.part
        res = RESULTS / name
        res.mkdir(parents=True, exist_ok=True)
        cmd = " ".join(c.replace("{res}", str(res)) for c in args.command)
        tag = len(list(res.glob("spawn-*.log")))
        subprocess.Popen(["bash", "-c", f"cd {SRC}; {cmd} > {res}/spawn-{tag}.log 2>&1"], env=_env(name, RELS / name),
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"spawned in {name}: {cmd}")
    _advance(state, args.jobs)
    while time.time() - t0 < args.wait and _running(state):
        time.sleep(5)
        _advance(state, args.jobs)
    out = pathlib.Path(os.environ.get("OUT") or "out")
    out.mkdir(parents=True, exist_ok=True)
    _collect(out, state)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
