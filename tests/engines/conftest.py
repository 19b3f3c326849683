"""Engine surface tests: run by the nox ``surface_*`` sessions against a real installed engine.

``pytest tests/engines --engine vllm`` fails (never skips) when the named engine is not
installed, so a broken install can't pass as "no tests ran".
"""

from __future__ import annotations

import pytest
from packaging.version import Version

from moecompat.engines import ENGINES


@pytest.fixture(scope="session")
def engine_name(request):
    name = request.config.getoption("--engine")
    if name is None:
        pytest.skip("engine surface tests need --engine vllm|sglang (the nox surface sessions pass it)")
    return name


def _engine(request, name):
    wanted = request.config.getoption("--engine")
    if wanted is None:
        pytest.skip("engine surface tests need --engine vllm|sglang (the nox surface sessions pass it)")
    if wanted != name:
        pytest.skip(f"this session tests {wanted}")
    engine = ENGINES[name]
    if engine.version() is None:
        pytest.fail(f"--engine {name} was given but {name} is not installed")
    engine.load()  # raises EngineImportError (a failure) if the install is broken
    return engine


@pytest.fixture(scope="session")
def vllm_engine(request):
    return _engine(request, "vllm")


@pytest.fixture(scope="session")
def sglang_engine(request):
    return _engine(request, "sglang")


def version_in(engine, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet

    v = engine.version()
    assert isinstance(v, Version)
    return SpecifierSet(spec).contains(v, prereleases=True)


def pytest_collection_modifyitems(config, items):
    """Run only the chosen engine's surface module (and the shared fact checks)."""
    name = config.getoption("--engine")
    if name is None:
        return
    other = {"vllm": "sglang", "sglang": "vllm"}.get(name)
    keep = [i for i in items if f"test_{other}_" not in i.nodeid]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


def assert_routing_matches_reference(backend: str, case: dict, renormalize: bool, seed: int) -> None:
    """The engine's top-k (``backend``) equals the reference on random logits: same ids up to order,
    weights within 1e-5. ``case``: select_experts options plus ``bias`` (draw a correction bias)
    and ``rsf`` (routed_scaling_factor)."""
    import torch

    import moecompat as mc

    case = dict(case)
    g = torch.Generator().manual_seed(seed)
    t, e = 9, 16
    logits = torch.randn(t, e, generator=g)
    bias = torch.randn(e, generator=g) * 0.1 if case.pop("bias") else None
    rsf = case.pop("rsf")
    kw = dict(case, renormalize=renormalize, e_score_correction_bias=bias, routed_scaling_factor=rsf)
    ref = mc.select_experts(torch.zeros(t, 8), logits, 3, backend="reference", **kw)
    got = mc.select_experts(torch.zeros(t, 8), logits, 3, backend=backend, **kw)
    assert got.topk_ids.dtype == torch.int32 and got.topk_weights.dtype == torch.float32
    o1, o2 = got.topk_ids.long().sort(1), ref.topk_ids.long().sort(1)
    assert torch.equal(o1.values, o2.values)
    torch.testing.assert_close(got.topk_weights.gather(1, o1.indices), ref.topk_weights.gather(1, o2.indices),
                               rtol=1e-5, atol=1e-6)


def assert_doctor_json_parses() -> dict:
    """``moecompat doctor --json`` in a fresh interpreter: its stdout is exactly one JSON document
    (whatever the engine prints while it imports), parsed with ``json.loads``."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "moecompat", "doctor", "--json"], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    return json.loads(out)
