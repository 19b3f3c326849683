"""Engine surface tests: run by the nox ``surface_*`` sessions against a real installed engine.

``pytest tests/engines --engine vllm`` fails (never skips) when the named engine is not
installed, so a broken install can't pass as "no tests ran".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from packaging.version import Version

from moecompat.engines import ENGINES

# Tests that need a fresh interpreter import the engine again there (20-60 s on a CI core). Their
# interpreters start as soon as collection ends and run beside the in-process tests; the test
# then only waits for the result.
EarlySpec = Callable[[], "tuple[list[str], dict[str, str] | None] | None"]
_EARLY: dict[str, subprocess.Popen] = {}
DOCTOR_JSON = [sys.executable, "-m", "moecompat", "doctor", "--json"]


def early_subprocess(spec: EarlySpec) -> Callable:
    """Mark a test whose fresh interpreter starts right after collection: ``spec()`` gives its
    argv and environment (or None: nothing to start, e.g. the test will skip). The test reads the
    finished process with [`early_result`][]."""
    def mark(fn):
        fn._early_subprocess = spec
        return fn
    return mark


def _start(name: str, spec: EarlySpec) -> None:
    if name not in _EARLY and (argv_env := spec()) is not None:
        argv, env = argv_env
        _EARLY[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def pytest_collection_finish(session):
    if session.config.getoption("--engine") is None:
        return
    for item in session.items:
        spec = getattr(getattr(item, "function", None), "_early_subprocess", None)
        if spec is not None:
            _start(item.originalname, spec)


def pytest_unconfigure(config):
    for proc in _EARLY.values():
        proc.kill()


def early_result(request, timeout: float = 600) -> subprocess.CompletedProcess:
    """Wait for the marked test's interpreter (started now if collection did not start it)."""
    name = request.node.originalname
    _start(name, request.function._early_subprocess)
    proc = _EARLY.pop(name)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def assert_doctor_json_parses(request) -> dict:
    """``moecompat doctor --json`` in a fresh interpreter (the calling test is marked
    ``@early_subprocess(lambda: (DOCTOR_JSON, None))``): its stdout is exactly one JSON document
    (whatever the engine prints while it imports), parsed with ``json.loads``."""
    import json

    proc = early_result(request)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)
