"""Generate docs/compatibility.md from recorded matrix results and the list of releases.

    python tools/compat_table.py docs/results docs/compatibility.md [tests/engines/releases.toml]

Every release of tests/engines/releases.toml gets a row with its CPU and GPU status: the
recorded run (docs/results/surface, docs/results/gpu), else why it was not run: the reason the
file gives for its range, "same minor as X which ran", or (GPU) the torch it pins when that is not
the GPU machine's.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ENTRY_POINTS = ["fused_experts", "select_experts", "moe_align_block_size", "get_config_dtype_str",
                "make_quant_config", "make_expert_map"]
MARK = {"ok": "ok", "unsupported": "unsupported", "error": "failed", "failed": "failed"}


def _load(folder: pathlib.Path) -> list[dict]:
    if not folder.exists():
        return []
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _minor(version: str, parts: int) -> tuple[int, ...]:
    return Version(version).release[:parts]


def _same_minor(ran, version: str, parts: int) -> list[str]:
    """The releases of ``ran`` in the same minor as ``version`` (the first ``parts`` numbers)."""
    return sorted((v for v in ran if _minor(v, parts) == _minor(version, parts) and v != version), key=Version)


def _reason(rules: list[dict], version: str) -> str | None:
    for rule in rules:
        if SpecifierSet(rule["versions"]).contains(Version(version), prereleases=True):
            return rule["reason"]
    return None


def _torch_minor(pin: str) -> str:
    return ".".join(pin.split(".")[:2])


def release_rows(engine: str, table: dict, cpu_runs: dict[str, dict], gpu_runs: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(release, torch pin, CPU status, GPU status) for every release of ``table`` (one engine of
    releases.toml), from the recorded runs and the reasons it gives."""
    parts = table.get("minor_parts", 2)
    gpu_torch = table["gpu_torch"]
    ran_cpu = {v for v, r in cpu_runs.items() if r["tests"]["failed"] == 0 and not r["failures"]}
    rows = []
    for version, pin in sorted(table["releases"].items(), key=lambda kv: Version(kv[0])):
        r = cpu_runs.get(version)
        why = _reason(table.get("cpu", []), version)
        if r is not None:
            t = r["tests"]
            counts = f"{t['passed']} passed, {t['failed']} failed" + (f", {t['skipped']} skipped" if t["skipped"] else "") + f" (torch {r['torch']})"
            if version in ran_cpu:
                cpu = f"ok: {counts}"
            elif why is not None:  # the run shows what the rule says: the engine does not import here
                cpu = f"impossible: {why} (its run: {counts})"
            else:
                cpu = f"failed: {counts}"
        elif why is not None:
            cpu = f"impossible: {why}"
        elif _same_minor(ran_cpu, version, parts):
            cpu = f"not run: same minor as {_same_minor(ran_cpu, version, parts)[-1]} which ran"
        else:
            cpu = "not run yet"
        if version in gpu_runs:
            gpu = gpu_runs[version]
        elif _same_minor(gpu_runs, version, parts):
            gpu = f"not run: same minor as {_same_minor(gpu_runs, version, parts)[-1]} which ran"
        elif pin != "-" and _torch_minor(pin) != gpu_torch:
            carried = sorted((v for v in gpu_runs if _torch_minor(table["releases"].get(v, "-")) == _torch_minor(pin)), key=Version)
            if carried:  # its torch was carried onto the GPU machine for another release: device time is the limit
                gpu = (f"not run: pins torch {_torch_minor(pin)}, the GPU machine has {gpu_torch}; carrying torch "
                       f"{_torch_minor(pin)} there works ({carried[-1]} ran, docs/gpu.md); not carried for this one yet")
            else:
                gpu = f"not run: pins torch {_torch_minor(pin)}, the GPU machine has {gpu_torch}"
                if Version(_torch_minor(pin)) > Version(gpu_torch):  # a newer stack can be carried there
                    gpu += f"; no torch {_torch_minor(pin)} carried there yet (docs/gpu.md)"
        elif (why := _reason(table.get("gpu", []), version)) is not None:
            gpu = f"not run: {why}"
        else:
            gpu = f"not run yet (pins torch {pin}, as the GPU machine)"
        rows.append((version, pin, cpu, gpu))
    return rows


def main(results: str, out: str, releases: str | None = None) -> int:
    res = pathlib.Path(results)
    releases_path = pathlib.Path(releases) if releases else pathlib.Path(__file__).resolve().parents[1] / "tests/engines/releases.toml"
    listed = tomllib.loads(releases_path.read_text())
    surface = _load(res / "surface")
    gpu = _load(res / "gpu")
    gpu_by = {}
    for g in gpu:
        key = (g["engine"], g["version"])
        cases = g.get("cases", [])
        passed = sum(1 for c in cases if c.get("ok"))
        gpu_by[key] = f"{passed}/{len(cases)} cases ({g.get('gpu', '?')}, torch {g.get('torch', '?')})"
    lines = [
        "# Compatibility",
        "",
        f"Generated by `nox -s compat_table` on {datetime.date.today().isoformat()} from the recorded runs in",
        "`docs/results/surface/` (CPU matrix: `nox -t surface`) and `docs/results/gpu/` (real kernels: `nox -s gpu_vllm`).",
        "",
        "Cells: **ok** = the adapter resolves and its surface tests pass against the installed release;",
        "**unsupported** = the release lacks the feature and moecompat raises `UnsupportedFeatureError` naming",
        "the versions that have it; **failed** = resolution or a surface test failed.",
        "Releases of the matrix (`tests/engines/envs.toml`) without a row have not been run yet; the tables",
        "\"Every ... release\" list every release with its status.",
        "",
    ]
    for engine in ("vllm", "sglang"):
        rows = sorted((r for r in surface if r["engine"] == engine), key=lambda r: Version(r["version"]))
        if not rows:
            continue
        lines += [f"## {engine}", "", "| version | torch | " + " | ".join(ENTRY_POINTS) + " | surface tests | GPU kernels | date |",
                  "|---" * (len(ENTRY_POINTS) + 5) + "|"]
        for r in rows:
            cells = [MARK.get(r["entry_points"].get(ep, "-"), r["entry_points"].get(ep, "-")) for ep in ENTRY_POINTS]
            t = r["tests"]
            tests = f"{t['passed']} passed, {t['failed']} failed" + (f", {t['skipped']} skipped" if t["skipped"] else "")
            if t["failed"] and _reason(listed.get(engine, {}).get("cpu", []), r["version"]):
                tests += " (does not import on CPU: see below)"
            lines.append(f"| {r['version']} | {r['torch']} | " + " | ".join(cells) + f" | {tests} | "
                         f"{gpu_by.get((engine, r['version']), 'not run')} | {r['date']} |")
        lines.append("")
        cpu_versions = {r["version"] for r in rows}
        gpu_only = sorted((v for (e, v) in gpu_by if e == engine and v not in cpu_versions), key=Version)
        if gpu_only:
            lines.append("GPU runs of releases without a CPU row (the CPU matrix runs each minor's latest "
                         "post-release): " + "; ".join(f"{v}: {gpu_by[(engine, v)]}" for v in gpu_only) + ".")
            lines.append("")
    for engine in ("vllm", "sglang"):
        table = listed.get(engine)
        if not table:
            continue
        cpu_runs = {r["version"]: r for r in surface if r["engine"] == engine}
        gpu_runs = {v: cell for (e, v), cell in gpu_by.items() if e == engine}
        rows = release_rows(engine, table, cpu_runs, gpu_runs)
        lines += [f"## Every {engine} release", "",
                  f"All {len(rows)} releases on the package index from {rows[0][0]} to {rows[-1][0]} "
                  f"(`tests/engines/releases.toml`), each with its CPU and GPU status and, for one not run, why.",
                  "", "| release | torch pin | CPU | GPU |", "|---|---|---|---|"]
        lines += [f"| {v} | {pin} | {cpu} | {gpu} |" for v, pin, cpu, gpu in rows]
        lines.append("")
    pathlib.Path(out).write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({len(surface)} surface runs, {len(gpu)} GPU runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
