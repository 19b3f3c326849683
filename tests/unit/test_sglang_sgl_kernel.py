"""SGLang facts found by running 0.4.8-0.5.4 on CPU, and how
the EP-layer adapter names a missing or unloadable sgl-kernel (no SGLang needed here; the engine
matrix, tests/engines, checks the same on each installed release)."""

from __future__ import annotations

import ctypes

import pytest
from packaging.version import Version

from moecompat.engines.sglang import ENGINE, EP_LAYER_NEEDS_SGL_KERNEL, sgl_kernel_unavailable


@pytest.mark.parametrize(("version", "holds"), [
    ("0.4.7", False),         # imports sgl_kernel only inside try/except ImportError
    ("0.4.8", True),          # `from sgl_kernel import silu_and_mul` unguarded, line 6
    ("0.4.8.post1", True),
    ("0.4.10.post2", True),   # under `if not (_is_npu or _is_hip):`
    ("0.5.3.post3", True),
    ("0.5.4", True),
    ("0.5.4.post1", False),   # the import is gone
    ("0.5.23", False),
])
def test_ep_layer_fact_range(version, holds):
    assert ENGINE.fact(EP_LAYER_NEEDS_SGL_KERNEL).holds_for(Version(version)) is holds


@pytest.mark.parametrize(("version", "holds"), [
    ("0.5.3.post3", False), ("0.5.4", False), ("0.5.4.post1", False), ("0.5.4.post2", True), ("0.5.10.post1", True),
    ("0.5.11", False),  # moved to moe_runner/triton_utils (another fact)
])
def test_down_moe_first_appears_in_0_5_4_post2(version, holds):
    assert ENGINE.fact("get_config_file_name.down_moe@config").holds_for(Version(version)) is holds


@pytest.mark.parametrize(("version", "holds"), [
    ("0.5.2", False), ("0.5.3", False), ("0.5.3.post1", False),  # found by running 0.5.3.post1 on CPU
    ("0.5.3.post2", True), ("0.5.10.post1", True), ("0.5.11", False),
])
def test_per_channel_quant_first_appears_in_0_5_3_post2(version, holds):
    assert ENGINE.fact("get_config_file_name.per_channel_quant@config").holds_for(Version(version)) is holds


def _real_load_failure() -> OSError:
    """The OSError a dlopen of a library that is not on this machine raises (what loading
    sgl-kernel's common_ops without libcuda.so.1 gives, by release an OSError or ImportError)."""
    try:
        ctypes.CDLL("libmoecompat-test-absent.so.1")
    except OSError as exc:
        return exc
    raise AssertionError("a library that does not exist loaded")


def test_missing_sgl_kernel_is_named():
    exc = ModuleNotFoundError("No module named 'sgl_kernel'", name="sgl_kernel")
    assert sgl_kernel_unavailable(exc) == "sgl_kernel is not installed"


def test_another_missing_module_is_not_blamed_on_sgl_kernel():
    assert sgl_kernel_unavailable(ModuleNotFoundError("No module named 'einops'", name="einops")) is None


def test_unloadable_sgl_kernel_is_named_with_its_error():
    failure = _real_load_failure()

    def load():
        raise failure

    reason = sgl_kernel_unavailable(failure, load=load)
    assert reason is not None and reason.startswith("sgl_kernel is installed but does not load (OSError: ")
    assert "libmoecompat-test-absent.so.1" in reason
    imp = ImportError("libcuda.so.1: cannot open shared object file: No such file or directory")

    def load_imp():
        raise imp

    assert sgl_kernel_unavailable(imp, load=load_imp) == (
        "sgl_kernel is installed but does not load (ImportError: libcuda.so.1: cannot open shared object file: "
        "No such file or directory)")


def test_error_is_not_blamed_on_sgl_kernel_when_it_loads_or_is_absent():
    failure = _real_load_failure()
    assert sgl_kernel_unavailable(failure, load=lambda: None) is None

    def absent():
        raise ModuleNotFoundError("No module named 'sgl_kernel'", name="sgl_kernel")

    assert sgl_kernel_unavailable(failure, load=absent) is None


def test_default_load_is_the_real_import():
    """Without SGLang's sgl-kernel here, the real import answers: an unrelated error is not blamed."""
    import importlib.util

    if importlib.util.find_spec("sgl_kernel") is not None:
        pytest.skip("sgl_kernel is installed here")
    assert sgl_kernel_unavailable(RuntimeError("unrelated")) is None
