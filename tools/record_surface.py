"""Record one surface-matrix run as JSON: versions, test counts, entry point statuses.

    python tools/record_surface.py ENGINE VERSION JUNIT_XML OUT_JSON
"""

from __future__ import annotations

import datetime
import json
import sys
import xml.etree.ElementTree as ET

# Which surface tests speak for which entry point (a failing test marks its entry point failed).
TEST_ENTRY_POINT = {
    "test_fused_experts_kwargs_bind": "fused_experts",
    "test_activation_support_matches_facts": "fused_experts",
    "test_config_dtype_str_equals_engine": "get_config_dtype_str",
    "test_quant_config_equals_engine_factories": "make_quant_config",
    "test_cpu_routing_agrees_with_reference": "select_experts",
    "test_expert_map_equals_engine": "make_expert_map",
    "test_topk_equals_engine": "select_experts",
    "test_fused_experts_call_binds": "fused_experts",
    "test_config_file_name_equals_engine": "get_config_file_name",
}


def main(engine: str, version: str, junit: str, out: str) -> int:
    import platform

    import torch

    from moecompat.info import doctor_report

    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    try:
        root = ET.parse(junit).getroot()
        for case in root.iter("testcase"):
            name = case.get("name", "")
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                failures.append(f"{case.get('classname')}::{name}")
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    except (OSError, ET.ParseError) as exc:
        failures.append(f"no test report: {exc}")
    report = doctor_report()
    entry = {ep: backends.get(engine, {}).get("status", "error") for ep, backends in report["entry_points"].items()}
    for f in failures:
        fn = f.split("::")[-1].split("[")[0]
        ep = TEST_ENTRY_POINT.get(fn)
        if ep in entry:
            entry[ep] = "failed"
    data = {
        "engine": engine,
        "version": version,
        "installed": report["engines"].get(engine),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tests": counts,
        "failures": failures,
        "entry_points": entry,
        "details": {ep: b.get(engine) for ep, b in report["entry_points"].items()},
    }
    with open(out, "w") as fh:
        json.dump(data, fh, indent=1)
    print(f"{engine} {version}: {counts} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
