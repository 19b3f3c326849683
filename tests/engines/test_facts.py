"""Every version fact of the engine under test holds exactly for the versions it names."""

from __future__ import annotations

import importlib
import inspect

import pytest

from moecompat._adapters import Fact
from moecompat.engines import ENGINES


def pytest_generate_tests(metafunc):
    if "fact" in metafunc.fixturenames:
        name = metafunc.config.getoption("--engine")
        facts = [f for f in ENGINES[name].facts if f.kind != "behaviour"] if name in ENGINES else []
        metafunc.parametrize("fact", facts, ids=[f.key for f in facts])


def probe(fact: Fact):
    """Whether the fact's symbol (or parameter) exists in the installed engine."""
    module, qualname = fact.where.split(":")
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Absent only if the missing module is the fact's own module (or a package of it);
        # a missing third-party dependency is a broken environment, not a version fact.
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return False
        _skip_if_sgl_kernel(module, exc)
        raise
    except Exception as exc:  # e.g. sgl-kernel installed without the NVIDIA driver: ImportError/OSError
        _skip_if_sgl_kernel(module, exc)
        raise
    for part in qualname.split("."):
        # A class attribute counts where the class body defines it (not inherited), as the API
        # snapshots record it and as the tracker hooks it.
        if isinstance(obj, type) and part not in vars(obj):
            return False
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    if fact.kind == "param":
        return fact.param in inspect.signature(obj).parameters
    return True


def _skip_if_sgl_kernel(module: str, exc: BaseException) -> None:
    """Skip (not verifiable here) when ``module`` imports sgl_kernel unconditionally in this
    release (a behaviour fact) and sgl_kernel is what failed: not installed, or not loadable."""
    from moecompat.engines.sglang import sgl_kernel_unavailable

    reason = sgl_kernel_unavailable(exc)
    if reason and _needs_sgl_kernel(module):
        pytest.skip(f"not verifiable here: {module} imports sgl_kernel (CUDA only) in this release "
                    f"(behaviour fact), and {reason}")


def _needs_sgl_kernel(module: str) -> bool:
    """A behaviour fact of the installed engine says ``module`` imports sgl_kernel unconditionally."""
    for engine in ENGINES.values():
        v = engine.version()
        for f in engine.facts:
            if f.kind == "behaviour" and f.where == module and "sgl_kernel" in f.description and v is not None and f.holds_for(v):
                return True
    return False


def test_fact_holds(request, fact):
    engine = request.getfixturevalue(f"{request.config.getoption('--engine')}_engine")
    present = probe(fact)
    expected = fact.holds_for(engine.version())
    assert present == expected, (
        f"{engine.name} {engine.version()}: fact {fact.key!r} ({fact.where}"
        f"{' param ' + fact.param if fact.param else ''}) says versions {fact.versions}, "
        f"but the installed release {'has' if present else 'lacks'} it"
    )
