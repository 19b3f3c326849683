#!/usr/bin/env python3
"""Turn what ``tools/device/matrix.py`` brought back into ``docs/results/gpu/<engine>-<version>.json``.

    python3 tools/device/collect_matrix.py RESULTS_DIR [RESULTS_DIR ...] [--dest docs/results/gpu]

Each ``RESULTS_DIR/<release>/`` holds ``gpu.json`` (the whole suite) and, where some tests were run
again after a fix, ``gpu-rerun*.json``: a re-run's records replace the main run's records of the
same tests (by the ``test`` key), its environment fields (versions, numerics mode) replace the main
run's, and the file says which tests came from which run. A release whose earlier result file came
from another GPU keeps it under ``DEST/<gpu>/``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shutil


def _slug(gpu: str) -> str:
    return {"NVIDIA H100 80GB HBM3": "h100"}.get(gpu, re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-"))


def merge(release: pathlib.Path) -> dict | None:
    main = release / "gpu.json"
    if not main.exists():
        return None
    data = json.loads(main.read_text())
    runs = [{"file": "gpu.json", "tests": sorted({c["test"] for c in data["cases"]})}]
    for rerun in sorted(release.glob("gpu-rerun*.json")):
        extra = json.loads(rerun.read_text())
        tests = {c["test"] for c in extra["cases"]}
        data["cases"] = [c for c in data["cases"] if c["test"] not in tests] + extra["cases"]
        # The environment as the re-run found it (after the fix): its versions and numerics mode.
        data.update({k: v for k, v in extra.items() if k != "cases"})
        runs.append({"file": rerun.name, "tests": sorted(tests), "replaces_main_run_records": True})
    data["runs"] = runs
    # pytest's own verdicts, beside the per-case records (a test may fail after recording).
    for run in runs:
        log = release / run["file"].replace("gpu", "pytest", 1).replace(".json", ".log")
        if log.exists():
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if re.search(r"\d+ (passed|failed)", ln)]
            if lines:
                run["pytest"] = re.sub(r"=+", "", lines[-1]).strip()
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=pathlib.Path)
    ap.add_argument("--dest", type=pathlib.Path, default=pathlib.Path("docs/results/gpu"))
    args = ap.parse_args()
    for results in args.results:
        for release in sorted(p for p in results.iterdir() if p.is_dir()):
            data = merge(release)
            if data is None:
                print(f"{release.name}: no gpu.json")
                continue
            out = args.dest / f"{data['engine']}-{data['version']}.json"
            if out.exists():
                old = json.loads(out.read_text())
                if old.get("gpu") != data["gpu"]:
                    keep = args.dest / _slug(old.get("gpu") or "unknown") / out.name
                    keep.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(out, keep)
                    print(f"  kept the {old.get('gpu')} run as {keep}")
            out.write_text(json.dumps(data, indent=1) + "\n")
            ok = sum(1 for c in data["cases"] if c.get("ok", True))
            print(f"{out}: {ok}/{len(data['cases'])} cases ok ({data['gpu']}, torch {data['torch']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
