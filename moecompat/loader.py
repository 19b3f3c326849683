"""``load_moe_weights``: stack per-expert checkpoint tensors into moecompat's MoE layout.

The mapping (a dict, or a YAML/JSON file) says, per projection, which precision and which
checkpoint tensors to read; ``{expert}`` in a name is replaced by the expert index::

    num_experts: 8
    w13:                      # gate and up projections -> w1 [E, 2I, H]
      precision: fp8_w8a8     # bf16 | fp16 | fp32 | fp8_w8a8 | gptq_int4 | awq_int4
      gate: model.layers.0.mlp.experts.{expert}.gate_proj   # + ".weight", ".weight_scale" (fp8)
      up: model.layers.0.mlp.experts.{expert}.up_proj       #   or .qweight/.qzeros/.scales/.g_idx
    w2:                       # down projection -> w2 [E, H, I]
      precision: gptq_int4
      down: model.layers.0.mlp.experts.{expert}.down_proj
      group_size: 128

Tensors are read one at a time with ``safetensors.safe_open`` (a checkpoint folder, a
``*.safetensors`` file, or a ``model.safetensors.index.json``) and written into preallocated
outputs, so peak memory is the outputs plus about one expert's tensors. Any error (missing
file or tensor, corrupt file, inconsistent shapes, unknown precision) is raised before anything
is returned.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping
from typing import Any

import torch

from . import int4 as _int4
from .errors import InvalidInputError
from .quant import (
    FP8_DTYPE,
    ExpertGroup,
    MixedQuantConfig,
    PerExpertQuantConfig,
    QuantConfig,
    make_per_expert_quant_config,
    make_quant_config,
)

__all__ = ["PRECISIONS", "load_moe_weights", "load_per_expert_moe_weights"]

PRECISIONS = ("bf16", "fp16", "fp32", "fp8_w8a8", "gptq_int4", "awq_int4")
_FLOATS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class _Checkpoint:
    """Tensor name -> file, from a folder, a file or an index; opens files lazily."""

    def __init__(self, path: str | pathlib.Path) -> None:
        try:
            from safetensors import safe_open
        except ImportError:
            raise InvalidInputError("checkpoint", "safetensors installed (pip install safetensors)", "not installed") from None
        self._open = safe_open
        p = pathlib.Path(path)
        self.files: dict[str, pathlib.Path] = {}
        if p.is_dir():
            index = p / "model.safetensors.index.json"
            if index.exists():
                self._read_index(index)
            else:
                for f in sorted(p.glob("*.safetensors")):
                    self._scan(f)
        elif p.name.endswith(".index.json"):
            self._read_index(p)
        elif p.suffix == ".safetensors":
            self._scan(p)
        else:
            raise InvalidInputError("checkpoint", "a folder, a .safetensors file or a .safetensors.index.json", str(path))
        if not self.files:
            raise InvalidInputError("checkpoint", "a checkpoint with safetensors files", f"none found at {path}")
        self._handles: dict[pathlib.Path, Any] = {}

    def _read_index(self, index: pathlib.Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, KeyError, json.JSONDecodeError) as exc:
            raise InvalidInputError("checkpoint", "a valid model.safetensors.index.json", f"{index}: {exc}") from None
        for name, fname in weight_map.items():
            self.files[name] = index.parent / fname

    def _scan(self, f: pathlib.Path) -> None:
        for name in self._handle(f).keys():  # noqa: SIM118 - safe_open handles are not iterable
            self.files[name] = f

    def _handle(self, f: pathlib.Path) -> Any:
        if not hasattr(self, "_handles"):
            self._handles = {}
        if f not in self._handles:
            if not f.exists():
                raise InvalidInputError("checkpoint", f"file {f.name} (named by the index)", "missing")
            try:
                self._handles[f] = self._open(str(f), framework="pt", device="cpu")
            except Exception as exc:
                raise InvalidInputError("checkpoint", f"a readable safetensors file {f.name}", f"corrupt: {exc}") from None
        return self._handles[f]

    def get(self, name: str) -> torch.Tensor:
        f = self.files.get(name)
        if f is None:
            raise InvalidInputError("mapping", f"tensor {name!r} in the checkpoint", "not found")
        try:
            return self._handle(f).get_tensor(name)
        except InvalidInputError:
            raise
        except Exception as exc:
            raise InvalidInputError("checkpoint", f"tensor {name!r} readable from {f.name}", f"corrupt: {exc}") from None

    def has(self, name: str) -> bool:
        return name in self.files


def _load_mapping(mapping: Mapping[str, Any] | str | pathlib.Path) -> dict[str, Any]:
    if isinstance(mapping, Mapping):
        return dict(mapping)
    p = pathlib.Path(mapping)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InvalidInputError("mapping", "PyYAML installed for a YAML mapping", "not installed") from None
        return dict(yaml.safe_load(text))
    return dict(json.loads(text))


def _read_linear(ck: _Checkpoint, precision: str, prefix: str, group_size: int | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One projection of one expert in ``[N, K]`` orientation: (weight, scale, zero points)
    in moecompat's per-expert layout for ``precision``."""
    if precision in _FLOATS:
        return ck.get(f"{prefix}.weight"), None, None
    if precision == "fp8_w8a8":
        w = ck.get(f"{prefix}.weight")
        if w.dtype != FP8_DTYPE:
            raise InvalidInputError(f"{prefix}.weight", "dtype float8_e4m3fn for precision fp8_w8a8", w.dtype)
        s = ck.get(f"{prefix}.weight_scale").float().reshape(-1)
        if s.numel() != 1:
            raise InvalidInputError(f"{prefix}.weight_scale", "a per-tensor scale (numel 1)", list(s.shape))
        return w, s, None
    if precision in ("gptq_int4", "awq_int4"):
        if group_size is None:
            raise InvalidInputError("group_size", f"a group size for {precision}", None)
        qw, qz, sc = ck.get(f"{prefix}.qweight"), ck.get(f"{prefix}.qzeros"), ck.get(f"{prefix}.scales")
        if precision == "gptq_int4":
            g_idx = ck.get(f"{prefix}.g_idx") if ck.has(f"{prefix}.g_idx") else None
            layer = _int4.from_gptq(qw, qz, sc, group_size, g_idx)
        else:
            layer = _int4.from_awq(qw, qz, sc, group_size)
        w, s, z = _int4.to_moe_layout([layer])
        return w[0], s[0], z[0]
    raise InvalidInputError("precision", f"one of {', '.join(PRECISIONS)}", repr(precision))


def _cat_rows(parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]], precision: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Concatenate gate and up along N (fp8: requantize to the larger per-tensor scale, as the
    engines do when loading w13)."""
    (wg, sg, zg), (wu, su, zu) = parts
    if precision == "fp8_w8a8":
        assert sg is not None and su is not None
        s = torch.maximum(sg, su)
        wg = (wg.float() * (sg / s)).to(FP8_DTYPE)
        wu = (wu.float() * (su / s)).to(FP8_DTYPE)
        return torch.cat([wg, wu]), s, None
    w = torch.cat([wg, wu])
    scale = torch.cat([sg, su]) if sg is not None and su is not None else None
    if zg is not None and zu is not None:
        z = torch.cat([zg, zu])  # packed along N: both halves have even N
    else:
        z = None
    return w, scale, z


def load_moe_weights(
    checkpoint: str | pathlib.Path,
    mapping: Mapping[str, Any] | str | pathlib.Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor, QuantConfig | MixedQuantConfig]:
    """Load a MoE layer's experts: ``(w1 [E, 2I, H'], w2 [E, H, I'], quant_config)``.

    ``dtype``: the activation dtype (float weights are cast to it; int4 scales too). The quant
    config is a :class:`QuantConfig` when both projections share a precision, else a
    :class:`MixedQuantConfig` (reference backend).
    """
    m = _load_mapping(mapping)
    try:
        num_experts = int(m["num_experts"])
        specs = {"w13": dict(m["w13"]), "w2": dict(m["w2"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError("mapping", "num_experts, w13 {precision, gate, up} and w2 {precision, down}", f"missing {exc}") from None
    _check_precisions(specs, "mapping")
    return _load_experts(_Checkpoint(checkpoint), list(range(num_experts)), specs, device, dtype)


def load_per_expert_moe_weights(
    checkpoint: str | pathlib.Path,
    mapping: Mapping[str, Any] | str | pathlib.Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> PerExpertQuantConfig:
    """Load a MoE layer whose experts have different precisions: a :class:`PerExpertQuantConfig`
    (pass it to ``fused_experts(x, None, None, ...)``).

    The mapping lists groups of experts, each with the ``w13``/``w2`` entries of
    :func:`load_moe_weights` (``{expert}`` is the global id)::

        num_experts: 8
        groups:
          - experts: [0, 1, 2, 3]
            w13: {precision: fp8_w8a8, gate: "experts.{expert}.gate_proj", up: "experts.{expert}.up_proj"}
            w2: {precision: fp8_w8a8, down: "experts.{expert}.down_proj"}
          - experts: [4, 5, 6, 7]
            w13: {precision: gptq_int4, gate: ..., up: ..., group_size: 128}
            w2: {precision: bf16, down: ...}

    Each group's weights are ``[len(experts), ...]`` in the group's order; ids in no group are
    errors at call time (see :func:`moecompat.make_per_expert_quant_config`).
    """
    m = _load_mapping(mapping)
    try:
        num_experts = int(m["num_experts"])
        raw_groups = list(m["groups"])
        parsed = [(list(g["experts"]), {"w13": dict(g["w13"]), "w2": dict(g["w2"])}) for g in raw_groups]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError("mapping", "num_experts and groups [{experts, w13 {precision, gate, up}, w2 {precision, down}}]",
                                f"missing {exc}") from None
    for i, (_, specs) in enumerate(parsed):
        _check_precisions(specs, f"mapping.groups[{i}]")
    ck = _Checkpoint(checkpoint)
    groups = []
    for i, (ids, specs) in enumerate(parsed):
        if any(not isinstance(e, int) or not 0 <= e < num_experts for e in ids):
            raise InvalidInputError(f"mapping.groups[{i}].experts", f"expert ids in [0, {num_experts})", ids)
        w1, w2, qc = _load_experts(ck, ids, specs, device, dtype)
        groups.append(ExpertGroup(ids, w1, w2, qc))
    return make_per_expert_quant_config(groups, global_num_experts=num_experts)


def _check_precisions(specs: dict[str, dict[str, Any]], where: str) -> None:
    for proj, spec in specs.items():
        if spec.get("precision") not in PRECISIONS:
            raise InvalidInputError(f"{where}.{proj}.precision", f"one of {', '.join(PRECISIONS)}", repr(spec.get("precision")))


def _load_experts(
    ck: _Checkpoint, ids: list[int], specs: dict[str, dict[str, Any]], device: str | torch.device, dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, QuantConfig | MixedQuantConfig]:
    """Stack experts ``ids`` (global ids, substituted for ``{expert}``) in that order."""
    out: dict[str, list[torch.Tensor | None]] = {}
    for proj, spec in specs.items():
        prec = spec["precision"]
        keys = ("gate", "up") if proj == "w13" else ("down",)
        tensors: list[torch.Tensor | None] = [None, None, None]
        first_shapes: list[Any] = []
        for j, e in enumerate(ids):
            parts = [_read_linear(ck, prec, str(spec[k]).format(expert=e), spec.get("group_size")) for k in keys]
            w, s, z = _cat_rows(parts, prec) if len(parts) == 2 else parts[0]
            if prec in _FLOATS:
                w = w.to(dtype)
            elif prec in ("gptq_int4", "awq_int4") and s is not None:
                s = s.to(dtype)
            shapes = [None if t is None else tuple(t.shape) for t in (w, s, z)]
            if j == 0:
                first_shapes = shapes
                for i, t in enumerate((w, s, z)):
                    if t is not None:
                        tensors[i] = torch.empty((len(ids), *t.shape), dtype=t.dtype, device=device)
            elif shapes != first_shapes:
                raise InvalidInputError(f"{proj} of expert {e}", f"shapes {first_shapes} like expert {ids[0]}", shapes)
            for i, t in enumerate((w, s, z)):
                if t is not None:
                    tensors[i][j].copy_(t)  # type: ignore[index]
            del w, s, z, parts
        out[proj] = tensors
    w1, s1, z1 = out["w13"]
    w2, s2, z2 = out["w2"]
    assert w1 is not None and w2 is not None
    if w1.shape[2] * (2 if specs["w13"]["precision"].endswith("int4") else 1) != w2.shape[1]:
        raise InvalidInputError("w2", f"hidden size {w2.shape[1]} matching w13's input size", list(w1.shape))

    def cfg(prec: str, scale: torch.Tensor | None, zp: torch.Tensor | None, group: int | None) -> QuantConfig:
        if prec in _FLOATS:
            return make_quant_config(None)
        if prec == "fp8_w8a8":
            assert scale is not None
            return make_quant_config("fp8_w8a8", w1_scale=scale.reshape(-1), w2_scale=scale.reshape(-1))
        return make_quant_config("int4_w4a16", w1_scale=scale, w2_scale=scale, w1_zp=zp, w2_zp=zp, group_size=group)

    c13 = cfg(specs["w13"]["precision"], s1, z1, specs["w13"].get("group_size"))
    c2 = cfg(specs["w2"]["precision"], s2, z2, specs["w2"].get("group_size"))
    if specs["w13"]["precision"] == specs["w2"]["precision"] and specs["w13"].get("group_size") == specs["w2"].get("group_size"):
        if c13.scheme is None:
            return w1, w2, c13
        return w1, w2, make_quant_config(c13.scheme, w1_scale=c13.w1_scale, w2_scale=c2.w2_scale, w1_zp=c13.w1_zp,
                                         w2_zp=c2.w2_zp, group_size=c13.group_size)
    return w1, w2, MixedQuantConfig(c13, c2)
