"""GPU kernel tests: ``pytest tests/gpu --engine vllm`` on a CUDA machine (nox gpu_vllm/gpu_sglang).

Without CUDA every test here is skipped (reported as skipped, never as passed); the nox GPU
sessions refuse to run without CUDA, so a CPU machine cannot produce a green GPU result.
Each case's error against the reference backend is collected and written to
``--gpu-results`` (JSON) for docs/results/gpu/.
"""

from __future__ import annotations

import json
import platform

import pytest
import torch

_RESULTS: list[dict] = []


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_engine(request):
    name = request.config.getoption("--engine")
    if name is None:
        pytest.skip("GPU kernel tests need --engine vllm|sglang")
    from moecompat.engines import ENGINES

    engine = ENGINES[name]
    if engine.version() is None:
        pytest.fail(f"--engine {name} was given but {name} is not installed")
    engine.load()
    return engine


@pytest.fixture
def record():
    def _record(**case):
        _RESULTS.append(case)

    return _record


def pytest_sessionfinish(session, exitstatus):
    out = session.config.getoption("--gpu-results")
    if not out or not _RESULTS:
        return
    from moecompat.engines import ENGINES

    name = session.config.getoption("--engine")
    engine = ENGINES.get(name)
    data = {
        "engine": name,
        "version": engine.version_str() if engine else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "faithful_numerics": _numerics_name(name),
        "is_deep_gemm_e8m0_used": _e8m0(name),
        "cases": _RESULTS,
    }
    with open(out, "w") as fh:
        json.dump(data, fh, indent=1)


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def _numerics_name(engine: str | None) -> str | None:
    import moecompat as mc
    from moecompat.api import resolve_numerics

    try:
        return resolve_numerics(engine, "reference").name if engine else None
    except mc.MoECompatError as exc:
        return f"unavailable: {exc}"


def _e8m0(engine: str | None) -> bool | None:
    """What vLLM's own oracle says (None for SGLang, or a vLLM without it)."""
    if engine != "vllm":
        return None
    try:
        from vllm.utils.deep_gemm import is_deep_gemm_e8m0_used
    except ImportError:
        return None
    return bool(is_deep_gemm_e8m0_used())
