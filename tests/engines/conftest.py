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
