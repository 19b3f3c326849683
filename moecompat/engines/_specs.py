"""The engines moecompat adapts, each declared once.

Everything that lists engines reads this table: the backend vocabulary and ``"auto"`` order
(`moecompat._backends`), the CLI's ``--engine`` choices, `moecompat.engine_info` and
``moecompat doctor``, the engine test suites and the nox sessions (``noxfile.py`` reads this file
with ``runpy``: it imports nothing, so nox needs neither torch nor moecompat installed).

Keys: ``name`` (the backend name users pass), ``label`` (for messages), ``distributions``
(PyPI names, first installed wins), ``root_module`` (imported once to load the engine's MoE code),
``tested`` (the releases the CPU matrix ran: a newer release is outside the tested range, and
what it lacks is reported as drift), ``components`` (other distributions ``doctor`` reports), and ``install``
(the pip requirement a user installs).
"""

ENGINE_SPECS: tuple[dict, ...] = (
    {
        "name": "vllm",
        "label": "vLLM",
        "distributions": ("vllm",),
        "root_module": "vllm.model_executor.layers.fused_moe",
        "tested": ">=0.6,<0.34",
        "components": {"flashinfer": ("flashinfer-python", "flashinfer")},
        "install": "vllm",
    },
    {
        "name": "sglang",
        "label": "SGLang",
        "distributions": ("sglang",),
        "root_module": "sglang.srt.layers.moe.topk",
        "tested": ">=0.4.7,<0.5.24",
        "components": {"sgl_kernel": ("sglang-kernel", "sgl-kernel")},
        "install": "sglang[srt]",
    },
)

#: Engine names in ``backend="auto"`` order (vLLM first: the broadest set of Triton MoE kernels).
ENGINE_NAMES: tuple[str, ...] = tuple(spec["name"] for spec in ENGINE_SPECS)
