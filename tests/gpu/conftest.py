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
