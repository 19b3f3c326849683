"""Engine-neutral quantization config and helpers that quantize/dequantize MoE weights.

Weight layouts are those of vLLM's Triton fused-MoE kernels (SGLang's are the same), for
``w [E, N, K]`` (``N = 2*I, K = H`` for ``w1``; ``N = H, K = I`` for ``w2``):

| scheme | weight tensor | ``w*_scale`` (and ``w*_zp``) |
|---|---|---|
| ``fp8_w8a8`` | float8_e4m3fn ``[E, N, K]`` | per-tensor ``[E]``; per-channel (``per_out_ch_quant``) ``[E, N, 1]``; block ``[E, ceil(N/bn), ceil(K/bk)]``; float32 |
| ``int8_w8a8`` | int8 ``[E, N, K]`` | as fp8_w8a8 |
| ``int8_w8a16`` | int8 ``[E, N, K]`` | per-channel ``[E, N]`` float32 |
| ``int4_w4a16`` | uint8 ``[E, N, K//2]``, two int4 per byte, even k in the low nibble | ``[E, N, K//group_size]`` (activation dtype); zero points: uint8 ``[E, N//2, K//group_size]`` (even n in the low nibble), or none: offset 8 |
| ``mxfp4_w4a16`` | uint8 ``[E, N, K//2]`` e2m1 | uint8 e8m0 ``[E, N, K//32]`` |

Activations of ``*_w8a8`` schemes are quantized by the kernel: dynamically per tensor (default),
per token (``per_act_token_quant``), per ``[1, bk]`` group (block schemes), or statically with a
given per-tensor ``a1_scale`` / ``a2_scale`` (numel 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch

from . import mx as _mx
from ._scalars import check_bool, check_int, check_int_pair, describe
from .errors import InvalidInputError
from .vocab import QuantScheme, parse_scheme

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "IDEAL_ACTIVATION_QUANT",
    "INT8_MAX",
    "ActivationQuantRules",
    "ExpertGroup",
    "MixedQuantConfig",
    "PerExpertQuantConfig",
    "QuantConfig",
    "QuantizedWeights",
    "dequantize_activation",
    "dequantize_weights",
    "fake_quantize_activation",
    "make_mixed_quant_config",
    "make_per_expert_quant_config",
    "make_quant_config",
    "pack_int4",
    "quantize_activation",
    "quantize_moe_weights",
    "quantize_weights",
    "unpack_int4",
]

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
INT8_MAX = 127.0
_W8A8 = (QuantScheme.FP8_W8A8, QuantScheme.INT8_W8A8)


@dataclasses.dataclass(frozen=True, eq=False)
class QuantConfig:
    """How the expert weights (and activations) are quantized; build with [`make_quant_config`][moecompat.make_quant_config].

    Frozen and engine-neutral: each engine adapter translates it at the edge (vLLM's
    ``FusedMoEQuantConfig`` or legacy ``use_*`` flags, SGLang's flags).
    """

    scheme: QuantScheme | None = None
    w1_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    a1_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    w1_zp: torch.Tensor | None = None
    w2_zp: torch.Tensor | None = None
    block_shape: tuple[int, int] | None = None
    per_act_token_quant: bool = False
    per_out_ch_quant: bool = False
    group_size: int | None = None
    #: Engine-specific translations of this config (built once, on first use by an adapter).
    _engine_cache: dict[str, Any] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Types only (make_quant_config checks the combinations): a directly built config must
        # not carry a str scheme, a float group size or an int block shape into a kernel.
        object.__setattr__(self, "scheme", parse_scheme(self.scheme))
        for name in ("w1_scale", "w2_scale", "a1_scale", "a2_scale", "w1_zp", "w2_zp"):
            t = getattr(self, name)
            if t is not None and not isinstance(t, torch.Tensor):
                raise InvalidInputError(name, "a torch.Tensor or None", describe(t))
        if self.block_shape is not None:
            object.__setattr__(self, "block_shape", check_int_pair("block_shape", self.block_shape))
        check_bool("per_act_token_quant", self.per_act_token_quant)
        check_bool("per_out_ch_quant", self.per_out_ch_quant)
        check_int("group_size", self.group_size, minimum=1, none=True)

    @property
    def is_quantized(self) -> bool:
        return self.scheme is not None

    @property
    def quantizes_activations(self) -> bool:
        return self.scheme in _W8A8

    @property
    def has_zero_points(self) -> bool:
        return self.w1_zp is not None

    def describe(self) -> str:
        """Short human description, e.g. ``fp8_w8a8 block[128, 128]``."""
        if self.scheme is None:
            return "unquantized"
        parts = [self.scheme.value]
        if self.block_shape is not None:
            parts.append(f"block{list(self.block_shape)}")
        if self.per_out_ch_quant:
            parts.append("per-channel")
        if self.per_act_token_quant:
            parts.append("per-token")
        if self.group_size is not None:
            parts.append(f"group {self.group_size}")
        if self.has_zero_points:
            parts.append("zp")
        if self.a1_scale is not None:
            parts.append("static-act")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True, eq=False)
class MixedQuantConfig:
    """Different precisions for the two projections: ``w13`` (gate/up, first GEMM) and ``w2``
    (down, second GEMM).

    ``w13`` supplies the first GEMM's tensors (``w13.w1_scale``, ``w13.w1_zp``,
    ``w13.a1_scale``); ``w2`` supplies the second's (``w2.w2_scale``, ``w2.w2_zp``,
    ``w2.a2_scale``). Build it with [`make_mixed_quant_config`][moecompat.make_mixed_quant_config]. The reference backend
    executes any mix; the engines' fused kernels take one scheme for both GEMMs, so an engine
    backend raises ``UnsupportedFeatureError``.
    """

    w13: QuantConfig
    w2: QuantConfig

    def __post_init__(self) -> None:
        for name in ("w13", "w2"):
            if not isinstance(getattr(self, name), QuantConfig):
                raise InvalidInputError(name, "a moecompat.QuantConfig (see make_quant_config)", describe(getattr(self, name)))

    def for_gemm(self, which: int) -> QuantConfig:
        return self.w13 if which == 1 else self.w2

    @property
    def quantizes_activations(self) -> bool:
        return self.w13.quantizes_activations or self.w2.quantizes_activations

    def describe(self) -> str:
        return f"w13 {self.w13.describe()} / w2 {self.w2.describe()}"


def _one_side(scheme: str | QuantScheme | None, scale: torch.Tensor | None, zp: torch.Tensor | None,
              a_scale: torch.Tensor | None, **opts: Any) -> QuantConfig:
    if parse_scheme(scheme) is None:
        return make_quant_config(None)
    return make_quant_config(scheme, w1_scale=scale, w2_scale=scale, w1_zp=zp, w2_zp=zp, a1_scale=a_scale,
                             a2_scale=a_scale, **opts)


def make_mixed_quant_config(
    w13_scheme: str | QuantScheme | None, w2_scheme: str | QuantScheme | None, *,
    w13_scale: torch.Tensor | None = None, w2_scale: torch.Tensor | None = None,
    w13_zp: torch.Tensor | None = None, w2_zp: torch.Tensor | None = None,
    a1_scale: torch.Tensor | None = None, a2_scale: torch.Tensor | None = None,
    w13_options: dict[str, Any] | None = None, w2_options: dict[str, Any] | None = None,
) -> MixedQuantConfig:
    """A [`MixedQuantConfig`][moecompat.MixedQuantConfig], e.g. ``make_mixed_quant_config("fp8_w8a8", "int4_w4a16",
    w13_scale=s13, w2_scale=s2, w2_zp=z2, w2_options={"group_size": 128})``. ``*_options`` are the
    other [`make_quant_config`][moecompat.make_quant_config] keywords (block_shape, group_size, per-channel flags)."""
    for name, opts in (("w13_options", w13_options), ("w2_options", w2_options)):
        if opts is not None and not isinstance(opts, dict):
            raise InvalidInputError(name, "a dict of make_quant_config keywords or None", describe(opts))
        allowed = {"block_shape", "group_size", "per_act_token_quant", "per_out_ch_quant"}
        for key in opts or {}:
            if key not in allowed:
                raise InvalidInputError(f"{name}[{key!r}]", "one of " + ", ".join(sorted(allowed)), repr(key))
    return MixedQuantConfig(_one_side(w13_scheme, w13_scale, w13_zp, a1_scale, **(w13_options or {})),
                            _one_side(w2_scheme, w2_scale, w2_zp, a2_scale, **(w2_options or {})))


@dataclasses.dataclass(frozen=True, eq=False)
class ExpertGroup:
    """Experts that share one precision, with their own stacked weights.

    ``experts``: the *global* expert ids of the group (a list, tuple, ``range`` or 1-D integer
    tensor; stored as a tuple of ints); ``experts[j]`` is the expert stored at ``w1[j]`` /
    ``w2[j]``. ``w1 [G, 2*I, H']`` and ``w2 [G, H, I']`` (``G = len(experts)``, ``'``: packed for
    4-bit schemes) in the layout of ``quant_config`` (see the module doc), whose scales are the
    group's own (``[G, ...]``). ``quant_config``: a [`QuantConfig`][moecompat.QuantConfig] or a
    [`MixedQuantConfig`][moecompat.MixedQuantConfig] (per-projection precision inside the group).
    """

    experts: Sequence[int]
    w1: torch.Tensor
    w2: torch.Tensor
    quant_config: QuantConfig | MixedQuantConfig

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", _expert_ids("experts", self.experts))
        for name in ("w1", "w2"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise InvalidInputError(name, "a torch.Tensor", describe(getattr(self, name)))
        if not isinstance(self.quant_config, (QuantConfig, MixedQuantConfig)):
            raise InvalidInputError("quant_config", "a QuantConfig or MixedQuantConfig", describe(self.quant_config))

    def describe(self) -> str:
        """e.g. ``experts 0-3: fp8_w8a8 per-channel``."""
        return f"experts {_id_ranges(tuple(self.experts))}: {self.quant_config.describe()}"


@dataclasses.dataclass(frozen=True, eq=False)
class PerExpertQuantConfig:
    """Per-expert precision: groups of experts, each with its own weights and quant config.

    Build it with [`make_per_expert_quant_config`][moecompat.make_per_expert_quant_config] and pass it as ``quant_config`` to
    [`moecompat.fused_experts`][moecompat.fused_experts] with ``w1=None, w2=None`` (stacked tensors cannot hold
    different dtypes per expert, so each [`ExpertGroup`][moecompat.ExpertGroup] carries its weights). The result is
    the sum over groups of one ``fused_experts`` call per group on the same ``topk_ids``, with an
    ``expert_map`` that maps the group's global ids to its local weights and every other expert to
    -1 (zero contribution); the group outputs are summed in float32 and returned in
    ``hidden_states.dtype`` (the reference backend adds each group's float32 result; an engine's
    kernel returns each group's in ``hidden_states.dtype``). Engine backends run each group with
    their own fused kernel; a group with a [`MixedQuantConfig`][moecompat.MixedQuantConfig] runs on the reference backend
    only (the engines' kernels run both GEMMs of a call in one scheme).
    """

    groups: tuple[ExpertGroup, ...]
    #: Total number of experts (``topk_ids`` values are ``< global_num_experts``).
    global_num_experts: int
    #: ``"error"``: an id routed to no group is an ``InvalidInputError`` (checked on CPU tensors,
    #: and on CUDA tensors in debug mode); ``"zero"``: such experts contribute zero (expert
    #: parallelism: experts of other ranks).
    uncovered: Literal["error", "zero"] = "error"
    #: device -> (per-group expert maps ``[global_num_experts]`` int32, coverage mask
    #: ``[global_num_experts]`` bool), built once per device.
    _maps: dict[torch.device, tuple[tuple[torch.Tensor, ...], torch.Tensor]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)
    #: (backend, activation, on_input, device, adapter) -> the bound runner of each group.
    _runners: dict[tuple[Any, ...], tuple[Any, ...]] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def hidden_size(self) -> int:
        return int(self.groups[0].w2.shape[1])

    @property
    def quantizes_activations(self) -> bool:
        return any(g.quant_config.quantizes_activations for g in self.groups)

    def describe(self) -> str:
        """e.g. ``experts 0-3: fp8_w8a8 per-channel; experts 4-7: int4_w4a16 group 64``."""
        return "; ".join(g.describe() for g in self.groups)

    def expert_maps(self, device: torch.device) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """``(maps, covered)`` on ``device``: ``maps[i] [global_num_experts]`` int32 maps group
        ``i``'s global ids to their index in its weights and every other id to -1; ``covered
        [global_num_experts]`` bool marks ids that belong to some group. Cached per device, so
        repeated calls pass the same tensors (and hit the validation cache)."""
        hit = self._maps.get(device)
        if hit is None:
            n = self.global_num_experts
            maps = []
            covered = torch.zeros(n, dtype=torch.bool)
            for g in self.groups:
                m = torch.full((n,), -1, dtype=torch.int32)
                ids = torch.tensor(g.experts, dtype=torch.long)
                m[ids] = torch.arange(len(g.experts), dtype=torch.int32)
                covered[ids] = True
                maps.append(m.to(device))
            hit = (tuple(maps), covered.to(device))
            self._maps[device] = hit
        return hit


def _expert_ids(name: str, experts: object) -> tuple[int, ...]:
    if isinstance(experts, torch.Tensor):
        if experts.dim() != 1 or experts.is_floating_point() or experts.is_complex():
            raise InvalidInputError(name, "a 1-D integer tensor of global expert ids", f"{experts.dtype} {list(experts.shape)}")
        experts = experts.tolist()
    if isinstance(experts, (str, bytes)) or not isinstance(experts, (Sequence, range)):
        raise InvalidInputError(name, "a sequence (list, tuple, range) of global expert ids", type(experts).__name__)
    ids = tuple(experts)
    if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
        raise InvalidInputError(name, "int expert ids", next(type(i).__name__ for i in ids if not isinstance(i, int) or isinstance(i, bool)))
    if not ids:
        raise InvalidInputError(name, "at least one expert id", "an empty sequence")
    if min(ids) < 0:
        raise InvalidInputError(name, "expert ids >= 0", min(ids))
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InvalidInputError(name, "distinct expert ids", f"expert {dup} listed {ids.count(dup)} times")
    return ids


def _id_ranges(ids: tuple[int, ...]) -> str:
    """``(0, 1, 2, 3, 6)`` -> ``"0-3, 6"`` (in the given order)."""
    parts: list[str] = []
    start = prev = ids[0]
    for i in (*ids[1:], None):
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def make_per_expert_quant_config(
    groups: Sequence[ExpertGroup],
    *,
    global_num_experts: int | None = None,
    uncovered: Literal["error", "zero"] = "error",
) -> PerExpertQuantConfig:
    """A [`PerExpertQuantConfig`][moecompat.PerExpertQuantConfig] from [`ExpertGroup`][moecompat.ExpertGroup] s, e.g. experts 0-3 in fp8 and
    4-7 in int4:

        w1a, w2a, qa = quantize_moe_weights(w1[:4], w2[:4], "fp8_w8a8", per_out_ch_quant=True)
        w1b, w2b, qb = quantize_moe_weights(w1[4:], w2[4:], "int4_w4a16", group_size=128)
        qc = make_per_expert_quant_config([ExpertGroup(range(4), w1a, w2a, qa),
                                           ExpertGroup(range(4, 8), w1b, w2b, qb)])
        out = moecompat.fused_experts(x, None, None, topk_weights, topk_ids, quant_config=qc)

    Checks here: groups are disjoint; each group's ``w1``/``w2`` are 3-D with ``len(experts)``
    experts in dim 0; every group has the same hidden size ``H`` (``w2.shape[1]``) and
    intermediate size ``I`` (``w1.shape[1] // 2``); ids are ``< global_num_experts`` (default:
    the largest id + 1). Dtypes and scale shapes of each group against its scheme, and the hidden
    size against ``hidden_states``, are checked when [`moecompat.fused_experts`][moecompat.fused_experts] runs.
    ``uncovered``: what an id in no group means (see [`PerExpertQuantConfig`][moecompat.PerExpertQuantConfig]).
    """
    if isinstance(groups, ExpertGroup) or not isinstance(groups, Sequence):
        raise InvalidInputError("groups", "a sequence of moecompat.ExpertGroup", type(groups).__name__)
    if not groups:
        raise InvalidInputError("groups", "at least one ExpertGroup", "an empty sequence")
    owner: dict[int, int] = {}
    hidden = inter = -1
    for i, g in enumerate(groups):
        name = f"groups[{i}]"
        if not isinstance(g, ExpertGroup):
            raise InvalidInputError(name, "a moecompat.ExpertGroup", type(g).__name__)
        if not isinstance(g.quant_config, (QuantConfig, MixedQuantConfig)):
            raise InvalidInputError(f"{name}.quant_config", "a QuantConfig or MixedQuantConfig", type(g.quant_config).__name__)
        for w, t in (("w1", g.w1), ("w2", g.w2)):
            if not isinstance(t, torch.Tensor):
                raise InvalidInputError(f"{name}.{w}", "a torch.Tensor", type(t).__name__)
            if t.dim() != 3 or t.shape[0] != len(g.experts):
                raise InvalidInputError(
                    f"{name}.{w}", f"a 3-D tensor with {len(g.experts)} experts in dim 0 (one per id in {name}.experts)", list(t.shape))
        for e in g.experts:
            if e in owner:
                raise InvalidInputError(f"{name}.experts", "expert ids in no other group", f"expert {e}, also in groups[{owner[e]}]")
            owner[e] = i
        g_hidden, g_inter = int(g.w2.shape[1]), int(g.w1.shape[1]) // 2
        if i == 0:
            hidden, inter = g_hidden, g_inter
        elif g_hidden != hidden:
            raise InvalidInputError(f"{name}.w2", f"hidden size {hidden} in dim 1 (like groups[0].w2)", list(g.w2.shape))
        elif g_inter != inter:
            raise InvalidInputError(f"{name}.w1", f"2 * intermediate = {2 * inter} in dim 1 (like groups[0].w1)", list(g.w1.shape))
    top = max(owner) + 1
    if global_num_experts is None:
        global_num_experts = top
    elif not isinstance(global_num_experts, int) or isinstance(global_num_experts, bool) or global_num_experts < top:
        raise InvalidInputError("global_num_experts", f"an int > every group's expert ids (>= {top})", global_num_experts)
    if uncovered not in ("error", "zero"):
        raise InvalidInputError("uncovered", "'error' or 'zero'", repr(uncovered))
    return PerExpertQuantConfig(tuple(groups), global_num_experts, uncovered)


#: The unquantized config (bf16/fp16/fp32 weights).
UNQUANTIZED = QuantConfig()


def make_quant_config(
    scheme: str | QuantScheme | None,
    *,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
    w1_zp: torch.Tensor | None = None,
    w2_zp: torch.Tensor | None = None,
    block_shape: list[int] | tuple[int, int] | None = None,
    per_act_token_quant: bool = False,
    per_out_ch_quant: bool = False,
    group_size: int | None = None,
) -> QuantConfig:
    """Build an engine-neutral [`QuantConfig`][moecompat.QuantConfig].

    ``scheme``: ``None`` (unquantized), ``"fp8_w8a8"``, ``"int8_w8a8"``, ``"int8_w8a16"``,
    ``"int4_w4a16"`` (needs ``group_size``; optional ``w*_zp``) or ``"mxfp4_w4a16"``.
    Scale shapes are checked against the weights when [`moecompat.fused_experts`][moecompat.fused_experts] runs;
    this function checks what it can without them.
    """
    s = parse_scheme(scheme)
    per_act_token_quant = check_bool("per_act_token_quant", per_act_token_quant)
    per_out_ch_quant = check_bool("per_out_ch_quant", per_out_ch_quant)
    if block_shape is not None:
        block_shape = check_int_pair("block_shape", block_shape)
    group_size = check_int("group_size", group_size, minimum=1, none=True)
    if s is None:
        extra = {
            k: v
            for k, v in dict(
                w1_scale=w1_scale, w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale,
                w1_zp=w1_zp, w2_zp=w2_zp, block_shape=block_shape, group_size=group_size,
            ).items()
            if v is not None
        }
        if extra or per_act_token_quant or per_out_ch_quant:
            names = sorted(extra) + (["per_act_token_quant"] if per_act_token_quant else []) + (
                ["per_out_ch_quant"] if per_out_ch_quant else []
            )
            raise InvalidInputError("scheme", "a quantization scheme when quantization options are given", f"None with {names}")
        return UNQUANTIZED
    for name, t in (("w1_scale", w1_scale), ("w2_scale", w2_scale)):
        if t is None:
            raise InvalidInputError(name, f"a scale tensor for scheme {s.value!r}", None)
        _check_tensor(name, t)
    for name, t in (("a1_scale", a1_scale), ("a2_scale", a2_scale), ("w1_zp", w1_zp), ("w2_zp", w2_zp)):
        if t is not None:
            _check_tensor(name, t)
    bs: tuple[int, int] | None = None
    if block_shape is not None:
        if s not in _W8A8:
            raise InvalidInputError(
                "block_shape", "None for scheme " + repr(s.value) + " (block scales are for fp8_w8a8/int8_w8a8; int4 uses group_size)", list(block_shape)
            )
        bs = (int(block_shape[0]), int(block_shape[1]))
        if per_act_token_quant or per_out_ch_quant:
            raise InvalidInputError("block_shape", "None when per_act_token_quant/per_out_ch_quant is set", list(bs))
        if a1_scale is not None or a2_scale is not None:
            raise InvalidInputError("a1_scale", "None with block_shape (block activations are quantized dynamically)", "a tensor")
    if s not in _W8A8:
        if per_act_token_quant:
            raise InvalidInputError("per_act_token_quant", f"False for weight-only scheme {s.value!r}", True)
        if a1_scale is not None or a2_scale is not None:
            raise InvalidInputError("a1_scale", f"None for weight-only scheme {s.value!r}", "a tensor")
    if per_out_ch_quant and s not in _W8A8:
        raise InvalidInputError("per_out_ch_quant", f"False for scheme {s.value!r} (its scale layout is fixed)", True)
    if s is QuantScheme.INT4_W4A16:
        if group_size is None:
            raise InvalidInputError("group_size", "a positive group size for int4_w4a16 (e.g. 128)", group_size)
        if (w1_zp is None) != (w2_zp is None):
            raise InvalidInputError("w2_zp", "zero points for both w1 and w2 or for neither", "only one given")
    else:
        if group_size is not None and not (s is QuantScheme.MXFP4_W4A16 and group_size == _mx.MX_BLOCK_SIZE):
            raise InvalidInputError("group_size", f"None for scheme {s.value!r}", group_size)
        if w1_zp is not None or w2_zp is not None:
            raise InvalidInputError("w1_zp", f"None for scheme {s.value!r} (zero points are for int4_w4a16)", "a tensor")
    if s is QuantScheme.MXFP4_W4A16:
        group_size = _mx.MX_BLOCK_SIZE
    if (a1_scale is None) != (a2_scale is None):
        raise InvalidInputError("a2_scale", "static scales for both a1 and a2 or for neither", "only one given")
    if a1_scale is not None and per_act_token_quant:
        raise InvalidInputError("a1_scale", "None with per_act_token_quant (per-token scales are dynamic)", "a tensor")
    return QuantConfig(
        scheme=s, w1_scale=w1_scale, w2_scale=w2_scale, a1_scale=a1_scale, a2_scale=a2_scale,
        w1_zp=w1_zp, w2_zp=w2_zp, block_shape=bs, per_act_token_quant=per_act_token_quant,
        per_out_ch_quant=per_out_ch_quant, group_size=group_size,
    )


def _check_tensor(name: str, t: object) -> None:
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(name, "a torch.Tensor", type(t).__name__)


# --------------------------------------------------------------------------------------------
# Expected shapes (used by validation and by the reference backend)


def weight_dtypes(scheme: QuantScheme | None) -> tuple[torch.dtype, ...]:
    """Dtypes a stored weight may have under ``scheme`` (4-bit schemes pack two values per byte)."""
    if scheme is None:
        return (torch.bfloat16, torch.float16, torch.float32)
    if scheme is QuantScheme.FP8_W8A8:
        return (FP8_DTYPE,)
    if scheme in (QuantScheme.INT8_W8A8, QuantScheme.INT8_W8A16):
        return (torch.int8,)
    return (torch.uint8,)


def logical_k(scheme: QuantScheme | None, stored_k: int) -> int:
    """Logical reduction size K of a stored weight's last dimension."""
    return stored_k * 2 if scheme in (QuantScheme.INT4_W4A16, QuantScheme.MXFP4_W4A16) else stored_k


def expected_weight_scale_shape(cfg: QuantConfig, e: int, n: int, k: int) -> tuple[tuple[int, ...], ...]:
    """Accepted shapes of the scale of a weight of logical shape [E, N, K]."""
    s = cfg.scheme
    if s in _W8A8:
        if cfg.block_shape is not None:
            bn, bk = cfg.block_shape
            return ((e, math.ceil(n / bn), math.ceil(k / bk)),)
        if cfg.per_out_ch_quant:
            return ((e, n, 1), (e, n))
        return ((e,), (e, 1), (e, 1, 1))
    if s is QuantScheme.INT8_W8A16:
        return ((e, n), (e, n, 1))
    if s is QuantScheme.INT4_W4A16:
        assert cfg.group_size is not None
        return ((e, n, k // cfg.group_size),)
    if s is QuantScheme.MXFP4_W4A16:
        return ((e, n, k // _mx.MX_BLOCK_SIZE),)
    return ()


def expected_zp_shape(cfg: QuantConfig, e: int, n: int, k: int) -> tuple[int, ...]:
    assert cfg.group_size is not None
    return (e, n // 2, k // cfg.group_size)


# --------------------------------------------------------------------------------------------
# int4 packing


def pack_int4(q: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pack int4 codes (integers 0..15) two per byte along ``dim``; even index in the low nibble."""
    if not isinstance(q, torch.Tensor) or q.is_complex():
        raise InvalidInputError("q", "a real tensor of int4 codes 0..15", getattr(q, "dtype", describe(q)))
    dim = check_int("dim", dim, minimum=-q.dim(), maximum=q.dim() - 1)
    q = q.to(torch.uint8).movedim(dim, -1)
    if q.shape[-1] % 2:
        raise InvalidInputError("q", f"an even size along dim {dim}", tuple(q.shape))
    return (q[..., 0::2] | (q[..., 1::2] << 4)).movedim(-1, dim)


def unpack_int4(packed: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Inverse of [`pack_int4`][moecompat.quant.pack_int4]: bytes -> int4 codes (uint8 0..15), doubling ``dim``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise InvalidInputError("packed", "a uint8 tensor", getattr(packed, "dtype", describe(packed)))
    dim = check_int("dim", dim, minimum=-packed.dim(), maximum=packed.dim() - 1)
    p = packed.movedim(dim, -1)
    out = torch.stack([p & 0x0F, (p >> 4) & 0x0F], dim=-1).reshape(*p.shape[:-1], p.shape[-1] * 2)
    return out.movedim(-1, dim)


# --------------------------------------------------------------------------------------------
# Weights


class QuantizedWeights(NamedTuple):
    """A quantized weight ``[E, N, K']`` with its scale and optional zero points."""

    weight: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None


def _expand_blocks(scale: torch.Tensor, n: int, k: int, bn: int, bk: int) -> torch.Tensor:
    return scale.repeat_interleave(bn, dim=-2)[..., :n, :].repeat_interleave(bk, dim=-1)[..., :k]


def quantize_weights(
    w: torch.Tensor,
    scheme: str | QuantScheme,
    *,
    block_shape: tuple[int, int] | list[int] | None = None,
    per_out_ch_quant: bool = False,
    group_size: int | None = None,
    zero_point: bool = False,
) -> QuantizedWeights:
    """Quantize float expert weights ``w [E, N, K]`` into the layout of ``scheme`` (module doc)."""
    s = parse_scheme(scheme)
    if s is None:
        raise InvalidInputError("scheme", "a quantization scheme", None)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise InvalidInputError("w", "a floating-point tensor [E, N, K]", getattr(w, "dtype", describe(w)))
    if w.dim() != 3:
        raise InvalidInputError("w", "a 3-D tensor [E, N, K]", tuple(w.shape))
    if block_shape is not None:
        block_shape = check_int_pair("block_shape", block_shape)
    per_out_ch_quant = check_bool("per_out_ch_quant", per_out_ch_quant)
    zero_point = check_bool("zero_point", zero_point)
    group_size = check_int("group_size", group_size, minimum=1, none=True)
    e, n, k = w.shape
    wf = w.float()
    if s in _W8A8:
        qmax, qdtype = (FP8_MAX, FP8_DTYPE) if s is QuantScheme.FP8_W8A8 else (INT8_MAX, torch.int8)
        if block_shape is not None:
            bn, bk = block_shape
            nb, kb = math.ceil(n / bn), math.ceil(k / bk)
            padded = torch.zeros(e, nb * bn, kb * bk, dtype=torch.float32, device=w.device)
            padded[:, :n, :k] = wf
            amax = padded.reshape(e, nb, bn, kb, bk).abs().amax(dim=(2, 4))
            scale = (amax / qmax).clamp(min=1e-12)
            full = _expand_blocks(scale, n, k, bn, bk)
        elif per_out_ch_quant:
            scale = (wf.abs().amax(dim=-1, keepdim=True) / qmax).clamp(min=1e-12)
            full = scale
        else:
            scale = (wf.abs().amax(dim=(1, 2)) / qmax).clamp(min=1e-12)
            full = scale[:, None, None]
        q = wf / full
        q = q.clamp(-FP8_MAX, FP8_MAX).to(qdtype) if qdtype == FP8_DTYPE else q.round().clamp(-128, 127).to(qdtype)
        return QuantizedWeights(q, scale.float(), None)
    if s is QuantScheme.INT8_W8A16:
        scale = (wf.abs().amax(dim=-1) / INT8_MAX).clamp(min=1e-12)
        q = (wf / scale[..., None]).round().clamp(-128, 127).to(torch.int8)
        return QuantizedWeights(q, scale.float(), None)
    if s is QuantScheme.INT4_W4A16:
        if group_size is None or k % group_size:
            raise InvalidInputError("group_size", f"a divisor of K={k}", group_size)
        g = wf.reshape(e, n, k // group_size, group_size)
        if zero_point:
            lo = g.amin(dim=-1).clamp(max=0)
            hi = g.amax(dim=-1).clamp(min=0)
            scale = ((hi - lo) / 15.0).clamp(min=1e-8)
            zp = (-lo / scale).round().clamp(0, 15)
            q = (g / scale[..., None]).round() + zp[..., None]
            codes = q.clamp(0, 15).reshape(e, n, k)
            return QuantizedWeights(
                pack_int4(codes, dim=-1), scale.to(w.dtype if w.is_floating_point() else torch.float16), pack_int4(zp, dim=1)
            )
        scale = (g.abs().amax(dim=-1) / 7.0).clamp(min=1e-8)
        codes = ((g / scale[..., None]).round().clamp(-8, 7) + 8).reshape(e, n, k)
        return QuantizedWeights(pack_int4(codes, dim=-1), scale.to(w.dtype), None)
    if s is QuantScheme.MXFP4_W4A16:
        packed, scales = _mx.quantize_mxfp4(wf)
        return QuantizedWeights(packed, scales, None)
    raise InvalidInputError("scheme", "a quantization scheme", None)


def dequantize_weights(
    weight: torch.Tensor,
    cfg: QuantConfig,
    which: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize ``w1`` (``which=1``) or ``w2`` (``which=2``) of ``cfg`` to ``[E, N, K]`` of ``dtype``."""
    s = cfg.scheme
    if s is None:
        return weight.to(dtype)
    scale = cfg.w1_scale if which == 1 else cfg.w2_scale
    assert scale is not None
    if s in _W8A8:
        wf = weight.float()
        e, n, k = wf.shape
        if cfg.block_shape is not None:
            full = _expand_blocks(scale.float(), n, k, *cfg.block_shape)
        elif cfg.per_out_ch_quant:
            full = scale.float().reshape(e, n, 1)
        else:
            full = scale.float().reshape(e, 1, 1)
        return (wf * full).to(dtype)
    if s is QuantScheme.INT8_W8A16:
        e, n, _ = weight.shape
        return (weight.float() * scale.float().reshape(e, n, 1)).to(dtype)
    if s is QuantScheme.INT4_W4A16:
        codes = unpack_int4(weight, dim=-1).float()
        e, n, k = codes.shape
        gs = cfg.group_size
        assert gs is not None
        zp_packed = cfg.w1_zp if which == 1 else cfg.w2_zp
        zp = unpack_int4(zp_packed, dim=1).float() if zp_packed is not None else torch.full_like(scale, 8.0, dtype=torch.float32)
        g = codes.reshape(e, n, k // gs, gs)
        return ((g - zp[..., None]) * scale.float()[..., None]).reshape(e, n, k).to(dtype)
    if s is QuantScheme.MXFP4_W4A16:
        return _mx.dequantize_mxfp4(weight, scale, dtype)
    raise AssertionError(s)


# --------------------------------------------------------------------------------------------
# Activations (what a w8a8 kernel does to its input before each GEMM)


@dataclasses.dataclass(frozen=True)
class ActivationQuantRules:
    """How a w8a8 kernel quantizes a GEMM input: the arithmetic conventions of the engines'
    quantizers, which moecompat's reference follows under an engine's
    [`Numerics`][moecompat.reference.Numerics]. The defaults are moecompat's *ideal* arithmetic
    (``amax`` floored at 1e-10, a true division, round half to even).

    | field | effect |
    |---|---|
    | ``tensor_amax_floor`` / ``token_amax_floor`` / ``block_amax_floor`` | ``amax = max(amax, floor)`` before ``scale = amax / qmax`` (0: no floor) |
    | ``token_scale_floor`` | ``scale = max(scale, floor)`` (vLLM's fp8 per-token ``1/(448*512)``) |
    | ``tensor_reciprocal`` / ``token_reciprocal`` / ``static_reciprocal`` | quantize by ``x * fl32(1/scale)`` instead of ``x / scale`` |
    | ``block_ue8m0`` | block scales rounded up to powers of two (vLLM with DeepGEMM's UE8M0) |
    | ``block_by_inverse_amax`` | block codes ``x * fl32(qmax/amax)``, stored scale ``amax * fl32(1/qmax)`` (SGLang) |
    | ``int8_token_by_inverse_amax`` | int8 per-token codes ``x * fl32(127/amax)`` (both engines) |
    | ``int8_round_half_away`` | int8 rounding half away from zero (``libdevice.round``) instead of half to even |
    """

    tensor_amax_floor: float = 1e-10
    token_amax_floor: float = 1e-10
    block_amax_floor: float = 1e-10
    token_scale_floor: float = 0.0
    tensor_reciprocal: bool = False
    token_reciprocal: bool = False
    static_reciprocal: bool = False
    block_ue8m0: bool = False
    block_by_inverse_amax: bool = False
    int8_token_by_inverse_amax: bool = False
    int8_round_half_away: bool = False


IDEAL_ACTIVATION_QUANT = ActivationQuantRules()


def _ceil_pow2(scale: torch.Tensor) -> torch.Tensor:
    """``2 ** ceil(log2(scale))`` for positive float32 scales, bit-exactly: round the exponent up
    when the mantissa is not zero (UE8M0)."""
    bits = scale.float().contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    exponent = exponent + (mantissa != 0).to(torch.int32)
    return (exponent << 23).view(torch.float32)


def _to_codes(v: torch.Tensor, fp8: bool, rules: ActivationQuantRules, half_away: bool) -> torch.Tensor:
    if fp8:
        return v.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # saturating, round to nearest even
    r = torch.sign(v) * torch.floor(v.abs() + 0.5) if half_away else v.round()
    return r.clamp(-128, 127).to(torch.int8)


def quantize_activation(
    x: torch.Tensor,
    scheme: str | QuantScheme,
    *,
    scale: torch.Tensor | None = None,
    per_act_token_quant: bool = False,
    block_k: int | None = None,
    rules: ActivationQuantRules = IDEAL_ACTIVATION_QUANT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations ``x [T, K]`` as fp8/int8 w8a8 kernels do.

    Static per-tensor when ``scale`` (numel 1) is given; else dynamic: per ``[1, block_k]``
    group, per token, or per tensor. Returns ``(q, scale)`` with scale ``[T, K/block_k]``,
    ``[T, 1]`` or ``[1]`` (float32). ``rules``: the quantizer's arithmetic (an engine's, see
    [`ActivationQuantRules`][moecompat.quant.ActivationQuantRules]).
    """
    s = parse_scheme(scheme)
    if s not in _W8A8:
        raise InvalidInputError("scheme", "fp8_w8a8 or int8_w8a8", s)
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise InvalidInputError("x", "a 2-D floating-point tensor [T, K]",
                                list(x.shape) if isinstance(x, torch.Tensor) else describe(x))
    per_act_token_quant = check_bool("per_act_token_quant", per_act_token_quant)
    block_k = check_int("block_k", block_k, minimum=1, none=True)
    if scale is not None and (not isinstance(scale, torch.Tensor) or scale.numel() != 1 or not scale.is_floating_point()):
        raise InvalidInputError("scale", "a static per-tensor scale (a float tensor with one value) or None",
                                list(scale.shape) if isinstance(scale, torch.Tensor) else describe(scale))
    if not isinstance(rules, ActivationQuantRules):
        raise InvalidInputError("rules", "a moecompat.quant.ActivationQuantRules", describe(rules))
    fp8 = s is QuantScheme.FP8_W8A8
    qmax = FP8_MAX if fp8 else INT8_MAX
    xf = x.float()
    t, k = xf.shape
    half_away = False
    if scale is not None:
        sc = scale.float().reshape(1)
        v = xf * (1.0 / sc) if rules.static_reciprocal else xf / sc
    elif block_k is not None:
        nb = math.ceil(k / block_k)
        padded = torch.zeros(t, nb * block_k, device=x.device)
        padded[:, :k] = xf
        amax = padded.reshape(t, nb, block_k).abs().amax(dim=-1).clamp(min=rules.block_amax_floor)
        if rules.block_by_inverse_amax:
            sc = amax * torch.tensor(1.0 / qmax, dtype=torch.float32)
            mult = (qmax / amax).repeat_interleave(block_k, dim=-1)[:, :k]
            v = xf * mult
        else:
            sc = amax / qmax
            if rules.block_ue8m0:
                sc = _ceil_pow2(sc)
            v = xf / sc.repeat_interleave(block_k, dim=-1)[:, :k]
    elif per_act_token_quant:
        amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=rules.token_amax_floor)
        if not fp8 and rules.int8_token_by_inverse_amax:
            sc = amax / qmax
            v = xf * (qmax / amax)
            half_away = rules.int8_round_half_away
        else:
            sc = (amax / qmax).clamp(min=rules.token_scale_floor)
            v = xf * (1.0 / sc) if rules.token_reciprocal else xf / sc
    else:
        amax = xf.abs().amax().reshape(1) if xf.numel() else torch.ones(1, device=x.device)
        sc = amax.clamp(min=rules.tensor_amax_floor) / qmax
        v = xf * (1.0 / sc) if rules.tensor_reciprocal else xf / sc
    # A zero scale (all-zero input, no floor): the kernels' codes dequantize to 0.
    v = torch.nan_to_num(v, nan=0.0)
    return _to_codes(v, fp8, rules, half_away), sc


def dequantize_activation(q: torch.Tensor, scale: torch.Tensor, *, block_k: int | None = None) -> torch.Tensor:
    """Inverse of [`quantize_activation`][moecompat.quant.quantize_activation] (float32)."""
    qf = q.float()
    if scale.numel() == 1:
        return qf * scale.float().reshape(1, 1)
    if block_k is not None:
        return qf * scale.float().repeat_interleave(block_k, dim=-1)[:, : q.shape[-1]]
    return qf * scale.float()


def fake_quantize_activation(x: torch.Tensor, cfg: QuantConfig, which: int,
                             rules: ActivationQuantRules = IDEAL_ACTIVATION_QUANT) -> torch.Tensor:
    """Quantize then dequantize the input of GEMM ``which`` (1 or 2) as the kernel would."""
    assert cfg.scheme is not None
    scale = cfg.a1_scale if which == 1 else cfg.a2_scale
    block_k = cfg.block_shape[1] if cfg.block_shape is not None else None
    q, sc = quantize_activation(
        x, cfg.scheme, scale=scale, per_act_token_quant=cfg.per_act_token_quant, block_k=block_k, rules=rules
    )
    return dequantize_activation(q, sc, block_k=block_k)


def quantize_moe_weights(
    w1: torch.Tensor,
    w2: torch.Tensor,
    scheme: str | QuantScheme | None,
    *,
    block_shape: tuple[int, int] | list[int] | None = None,
    per_out_ch_quant: bool = False,
    per_act_token_quant: bool = False,
    group_size: int | None = None,
    zero_point: bool = False,
    a1_scale: torch.Tensor | None = None,
    a2_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, QuantConfig]:
    """Quantize float ``w1 [E, 2I, H]`` and ``w2 [E, H, I]`` and build the matching config.

    Convenience for tests, benchmarks and users who need quantized test data. Returns
    ``(w1_q, w2_q, quant_config)``.
    """
    s = parse_scheme(scheme)
    if s is None:
        return w1, w2, make_quant_config(None)
    q1 = quantize_weights(w1, s, block_shape=block_shape, per_out_ch_quant=per_out_ch_quant, group_size=group_size, zero_point=zero_point)
    q2 = quantize_weights(w2, s, block_shape=block_shape, per_out_ch_quant=per_out_ch_quant, group_size=group_size, zero_point=zero_point)
    return q1.weight, q2.weight, make_quant_config(
        s, w1_scale=q1.scale, w2_scale=q2.scale, w1_zp=q1.zero_point, w2_zp=q2.zero_point,
        a1_scale=a1_scale, a2_scale=a2_scale, block_shape=block_shape,
        per_act_token_quant=per_act_token_quant, per_out_ch_quant=per_out_ch_quant,
        group_size=group_size,
    )
