"""``load_moe_weights``: stack per-expert checkpoint tensors into moecompat's MoE layout.

The mapping (a dict, or a YAML/JSON file) says, per projection, which precision and which
checkpoint tensors to read; ``{expert}`` in a name is replaced by the expert index:

```yaml
num_experts: 8
w13:                      # gate and up projections -> w1 [E, 2I, H]
  precision: fp8_w8a8     # bf16 | fp16 | fp32 | fp8_w8a8 | gptq_int4 | awq_int4
  gate: model.layers.0.mlp.experts.{expert}.gate_proj   # + ".weight", ".weight_scale" (fp8)
  up: model.layers.0.mlp.experts.{expert}.up_proj       #   or .qweight/.qzeros/.scales/.g_idx
w2:                       # down projection -> w2 [E, H, I]
  precision: gptq_int4
  down: model.layers.0.mlp.experts.{expert}.down_proj
  group_size: 128
```

| precision | tensors per projection (``<name>.``) | stored dtype |
|---|---|---|
| ``bf16`` / ``fp16`` / ``fp32`` | ``weight [N, K]`` | bfloat16 / float16 / float32 |
| ``fp8_w8a8`` | ``weight [N, K]``, ``weight_scale`` (one value) | float8_e4m3fn, a float |
| ``gptq_int4`` | ``qweight [K/8, N]``, ``qzeros [K/g, N/8]``, ``scales [K/g, N]``, optional ``g_idx [K]`` | int32 (scales: a float) |
| ``awq_int4`` | ``qweight [K, N/8]``, ``qzeros [K/g, N/8]``, ``scales [K/g, N]`` | int32 (scales: a float) |

(``N`` output and ``K`` input features: gate and up are ``[I, H]``, down is ``[H, I]``.)

**Everything is checked before any output is allocated**, from the files' headers alone: the
mapping's keys, types and placeholders; every expert's tensors are present; each dtype matches
the declared precision; shapes agree across experts and projections (one ``I`` and one ``H``);
group sizes and scale shapes agree with their weights; no tensor name appears in two files.
Each error is an [`InvalidInputError`][moecompat.InvalidInputError] naming the file, the key or
tensor, and the expected and actual value. Tensors are then read one at a time with
``safetensors.safe_open`` (a checkpoint folder, a ``*.safetensors`` file, or a
``model.safetensors.index.json``) into preallocated outputs, so peak memory is the outputs plus
about one expert's tensors; a failed load returns nothing and leaves no file open.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import string
import struct
from collections.abc import Mapping
from typing import Any

import torch

from . import int4 as _int4
from ._scalars import check_int, describe
from .errors import InvalidInputError, MissingDependencyError
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
_FLOAT_CODES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
_DTYPE_CODES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32", "fp8": "F8_E4M3", "int32": "I32"}
_INT4 = ("gptq_int4", "awq_int4")
_PLACEHOLDER = "expert"
_SPEC_KEYS = {"w13": ("precision", "gate", "up", "group_size"), "w2": ("precision", "down", "group_size")}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


# --------------------------------------------------------------------------------------------
# Checkpoint: tensor name -> (file, dtype code, shape), from the files' headers


class _TensorInfo:
    __slots__ = ("dtype", "file", "shape")

    def __init__(self, file: pathlib.Path, dtype: str, shape: tuple[int, ...]) -> None:
        self.file, self.dtype, self.shape = file, dtype, shape


def _read_header(f: pathlib.Path) -> dict[str, _TensorInfo]:
    """Parse one safetensors file's header (length-prefixed JSON), checking it fits the file."""
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise InvalidInputError("checkpoint", f"a safetensors file ({f})", f"{size} bytes: truncated before the header")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise InvalidInputError("checkpoint", f"a header of at most {size - 8} bytes in {f}",
                                        f"a header length of {n} (truncated or not a safetensors file)")
            header = fh.read(n)
    except OSError as exc:
        raise InvalidInputError("checkpoint", f"a readable file {f}", f"{type(exc).__name__}: {exc}") from None
    try:
        meta = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError("checkpoint", f"a JSON header in {f}", f"invalid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise InvalidInputError("checkpoint", f"a JSON object header in {f}", type(meta).__name__)
    data_size = size - 8 - n
    out: dict[str, _TensorInfo] = {}
    for name, entry in meta.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"]))
        if not ok:
            raise InvalidInputError(f"{f}: tensor {name!r}", "a header entry {dtype, shape, data_offsets}", describe(entry))
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end <= data_size:
            raise InvalidInputError(f"{f}: tensor {name!r}", f"data offsets within the file's {data_size} data bytes",
                                    f"[{begin}, {end}] (truncated file?)")
        out[name] = _TensorInfo(f, entry["dtype"], tuple(entry["shape"]))
    return out


class _Checkpoint:
    """Tensor name -> header info, from a folder, a file or an index (headers only)."""

    def __init__(self, path: str | pathlib.Path) -> None:
        if not isinstance(path, (str, pathlib.Path)):
            raise InvalidInputError("checkpoint", "a path (str or pathlib.Path)", describe(path))
        p = pathlib.Path(path)
        self.tensors: dict[str, _TensorInfo] = {}
        if p.is_dir():
            index = p / "model.safetensors.index.json"
            if index.exists():
                self._read_index(index)
            else:
                for f in sorted(p.glob("*.safetensors")):
                    self._add_file(f)
        elif p.name.endswith(".index.json"):
            self._read_index(p)
        elif p.suffix == ".safetensors":
            if not p.exists():
                raise InvalidInputError("checkpoint", "an existing .safetensors file", f"{p}: no such file")
            self._add_file(p)
        else:
            raise InvalidInputError("checkpoint", "a folder, a .safetensors file or a .safetensors.index.json", str(path))
        if not self.tensors:
            raise InvalidInputError("checkpoint", "a checkpoint with safetensors files", f"none found at {path}")

    def _add_file(self, f: pathlib.Path, names: set[str] | None = None) -> None:
        for name, info in _read_header(f).items():
            if names is not None and name not in names:
                continue  # the index assigns this name to another file
            other = self.tensors.get(name)
            if other is not None:
                raise InvalidInputError(f"tensor {name!r}", "one file holding it",
                                        f"two: {other.file} and {f} (which would win is undefined)")
            self.tensors[name] = info

    def _read_index(self, index: pathlib.Path) -> None:
        try:
            data = json.loads(index.read_text())
        except OSError as exc:
            raise InvalidInputError("checkpoint", f"a readable index {index}", f"{type(exc).__name__}: {exc}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError("checkpoint", f"valid JSON in {index}", f"invalid JSON: {exc}") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise InvalidInputError(f"{index}: weight_map", "an object {tensor name: file name}", describe(weight_map))
        by_file: dict[str, set[str]] = {}
        for name, fname in weight_map.items():
            if not isinstance(fname, str) or not fname or "/" in fname or "\\" in fname or fname.startswith("."):
                raise InvalidInputError(f"{index}: weight_map[{name!r}]", "a file name in the index's folder", describe(fname))
            by_file.setdefault(fname, set()).add(name)
        for fname, names in sorted(by_file.items()):
            f = index.parent / fname
            if not f.exists():
                raise InvalidInputError(f"{index}: weight_map", f"file {fname} (named for {len(names)} tensors)", "missing")
            self._add_file(f, names)
            missing = sorted(names - {n for n, i in self.tensors.items() if i.file == f})
            if missing:
                raise InvalidInputError(f"{f}", f"the tensors the index names for it ({missing[0]!r}, ...)", "not in the file")

    def info(self, name: str, where: str) -> _TensorInfo:
        hit = self.tensors.get(name)
        if hit is None:
            raise InvalidInputError(where, f"tensor {name!r} in the checkpoint", "not found")
        return hit


# --------------------------------------------------------------------------------------------
# Mapping


def _load_mapping(mapping: Mapping[str, Any] | str | pathlib.Path) -> tuple[dict[str, Any], str]:
    """(mapping as a dict, a label for messages: the file or "mapping")."""
    if isinstance(mapping, Mapping):
        return dict(mapping), "mapping"
    if not isinstance(mapping, (str, pathlib.Path)):
        raise InvalidInputError("mapping", "a dict or the path of a YAML/JSON file", describe(mapping))
    p = pathlib.Path(mapping)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInputError("mapping", "a readable YAML/JSON file", f"{p}: {type(exc).__name__}: {exc}") from None
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MissingDependencyError("yaml", "a YAML mapping", "loader") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InvalidInputError("mapping", f"valid YAML in {p}", str(exc).replace("\n", " ")) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError("mapping", f"valid JSON in {p}", f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInputError("mapping", f"an object at the top of {p}", type(data).__name__)
    return data, str(p)


def _template(where: str, value: Any) -> str:
    """A tensor-name template with exactly the ``{expert}`` placeholder."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(where, "a tensor name with {expert}", describe(value))
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise InvalidInputError(where, "a tensor name with {expert}", f"{value!r}: {exc}") from None
    if fields != [_PLACEHOLDER]:
        raise InvalidInputError(where, "a tensor name with the placeholder {expert} exactly once (and no other braces)",
                                repr(value))
    return value


def _projection_spec(where: str, proj: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise InvalidInputError(f"{where}.{proj}", "an object {precision, " + ", ".join(_SPEC_KEYS[proj][1:-1]) + "}",
                                describe(spec))
    for key in spec:
        if key not in _SPEC_KEYS[proj]:
            raise InvalidInputError(f"{where}.{proj}", "keys among " + ", ".join(_SPEC_KEYS[proj]), f"unknown key {key!r}")
    prec = spec.get("precision")
    if prec not in PRECISIONS:
        raise InvalidInputError(f"{where}.{proj}.precision", "one of " + ", ".join(PRECISIONS), describe(prec))
    out: dict[str, Any] = {"precision": prec}
    for key in _SPEC_KEYS[proj][1:-1]:
        if key not in spec:
            raise InvalidInputError(f"{where}.{proj}", f"a {key!r} tensor-name template", "missing")
        out[key] = _template(f"{where}.{proj}.{key}", spec[key])
    group = spec.get("group_size")
    if prec in _INT4:
        out["group_size"] = check_int(f"{where}.{proj}.group_size", group, minimum=1)
    elif group is not None:
        raise InvalidInputError(f"{where}.{proj}.group_size", f"no group_size for precision {prec}", describe(group))
    else:
        out["group_size"] = None
    return out


def _specs(m: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    for proj in ("w13", "w2"):
        if proj not in m:
            raise InvalidInputError(where, f"a {proj!r} entry", f"keys {sorted(map(str, m))}")
    return {proj: _projection_spec(where, proj, m[proj]) for proj in ("w13", "w2")}


# --------------------------------------------------------------------------------------------
# Planning from headers: what each expert's tensors are, checked before anything is allocated


class _Linear:
    """One projection of one expert, from headers: ``(n_out, k_in)`` and the tensors to read."""

    __slots__ = ("k", "n", "names")

    def __init__(self, n: int, k: int, names: dict[str, str]) -> None:
        self.n, self.k, self.names = n, k, names


def _expect(ck: _Checkpoint, name: str, where: str, dtypes: tuple[str, ...], dims: int | None = None) -> _TensorInfo:
    info = ck.info(name, where)
    if info.dtype not in dtypes:
        raise InvalidInputError(f"{where}: {name}", f"dtype {' or '.join(dtypes)} in {info.file.name}", info.dtype)
    if dims is not None and len(info.shape) != dims:
        raise InvalidInputError(f"{where}: {name}", f"a {dims}-D tensor in {info.file.name}", list(info.shape))
    return info


def _plan_linear(ck: _Checkpoint, prec: str, prefix: str, group: int | None, where: str) -> _Linear:
    """Check one projection's tensors against ``prec`` (dtype, rank, the scale and zero-point
    shapes their weight implies) and return its logical shape ``[N, K]``."""
    if prec in _FLOATS:
        w = _expect(ck, f"{prefix}.weight", where, (_DTYPE_CODES[prec],), 2)
        return _Linear(w.shape[0], w.shape[1], {"weight": f"{prefix}.weight"})
    if prec == "fp8_w8a8":
        w = _expect(ck, f"{prefix}.weight", where, (_DTYPE_CODES["fp8"],), 2)
        s = _expect(ck, f"{prefix}.weight_scale", where, tuple(_FLOAT_CODES))
        if math.prod(s.shape) != 1:
            raise InvalidInputError(f"{where}: {prefix}.weight_scale", "a per-tensor scale (one value)", list(s.shape))
        return _Linear(w.shape[0], w.shape[1], {"weight": f"{prefix}.weight", "scale": f"{prefix}.weight_scale"})
    assert group is not None
    qw = _expect(ck, f"{prefix}.qweight", where, ("I32",), 2)
    qz = _expect(ck, f"{prefix}.qzeros", where, ("I32",), 2)
    sc = _expect(ck, f"{prefix}.scales", where, tuple(_FLOAT_CODES), 2)
    if prec == "gptq_int4":
        k, n = qw.shape[0] * 8, qw.shape[1]
    else:
        k, n = qw.shape[0], qw.shape[1] * 8
    if k % group:
        raise InvalidInputError(f"{where}.group_size", f"a divisor of {prefix}'s input size K={k}", group)
    if n % 8:
        raise InvalidInputError(f"{where}: {prefix}.qweight", "N divisible by 8 (zeros pack 8 columns per int32)", list(qw.shape))
    for t, expected, label in ((qz, (k // group, n // 8), "qzeros"), (sc, (k // group, n), "scales")):
        if t.shape != expected:
            raise InvalidInputError(f"{where}: {prefix}.{label}", f"shape {list(expected)} (K={k}, N={n}, group {group})",
                                    list(t.shape))
    names = {"qweight": f"{prefix}.qweight", "qzeros": f"{prefix}.qzeros", "scales": f"{prefix}.scales"}
    if prec == "gptq_int4" and f"{prefix}.g_idx" in ck.tensors:
        gi = _expect(ck, f"{prefix}.g_idx", where, ("I32", "I64"), 1)
        if gi.shape != (k,):
            raise InvalidInputError(f"{where}: {prefix}.g_idx", f"shape [{k}] (one group per input row)", list(gi.shape))
        names["g_idx"] = f"{prefix}.g_idx"
    return _Linear(n, k, names)


def _plan(ck: _Checkpoint, ids: list[int], specs: dict[str, dict[str, Any]], where: str) -> tuple[int, int, dict[str, list[list[_Linear]]]]:
    """Every expert's projections, checked against each other: ``(I, H, plans)``."""
    inter = hidden = -1
    plans: dict[str, list[list[_Linear]]] = {"w13": [], "w2": []}
    first = ids[0]
    for proj, keys in (("w13", ("gate", "up")), ("w2", ("down",))):
        spec = specs[proj]
        for e in ids:
            row = []
            for key in keys:
                prefix = spec[key].format(**{_PLACEHOLDER: e})
                lin = _plan_linear(ck, spec["precision"], prefix, spec["group_size"], f"{where}.{proj}.{key} (expert {e})")
                # gate/up: [I, H]; down: [H, I]. The first tensor read fixes I and H.
                i_, h_ = (lin.n, lin.k) if proj == "w13" else (lin.k, lin.n)
                if inter < 0:
                    inter, hidden = i_, h_
                elif (i_, h_) != (inter, hidden):
                    expected = f"[{inter}, {hidden}]" if proj == "w13" else f"[{hidden}, {inter}]"
                    raise InvalidInputError(
                        f"{where}.{proj}.{key} (expert {e}): {prefix}",
                        f"logical shape [N, K] = {expected} (I={inter}, H={hidden}, as {specs['w13']['gate'].format(**{_PLACEHOLDER: first})})",
                        f"[{lin.n}, {lin.k}]")
                row.append(lin)
            plans[proj].append(row)
    if specs["w13"]["precision"] in _INT4 or specs["w2"]["precision"] in _INT4:
        for proj in ("w13", "w2"):
            if specs[proj]["precision"] in _INT4:
                n_out = inter if proj == "w13" else hidden
                if n_out % 2:
                    raise InvalidInputError(f"{where}.{proj}", "an even output size (int4 zero points pack two per byte)", n_out)
    return inter, hidden, plans


# --------------------------------------------------------------------------------------------
# Reading


class _Reader:
    """Lazily opened ``safe_open`` handles, all closed when the load ends (success or not)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        try:
            from safetensors import safe_open
        except ImportError:
            raise MissingDependencyError("safetensors", "loading checkpoints", "loader") from None
        self._open, self._stack = safe_open, stack
        self._handles: dict[pathlib.Path, Any] = {}

    def get(self, info: _TensorInfo, name: str) -> torch.Tensor:
        h = self._handles.get(info.file)
        if h is None:
            try:
                h = self._handles[info.file] = self._stack.enter_context(self._open(str(info.file), framework="pt", device="cpu"))
            except Exception as exc:
                raise InvalidInputError("checkpoint", f"a readable safetensors file {info.file}", f"{type(exc).__name__}: {exc}") from None
        try:
            return h.get_tensor(name)
        except Exception as exc:
            raise InvalidInputError(f"{info.file}: tensor {name!r}", "readable tensor data", f"{type(exc).__name__}: {exc}") from None


def _read_linear(ck: _Checkpoint, rd: _Reader, prec: str, lin: _Linear, group: int | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One projection of one expert in ``[N, K]`` orientation: (weight, scale, zero points)
    in moecompat's per-expert layout for ``prec``."""
    t = {key: rd.get(ck.tensors[name], name) for key, name in lin.names.items()}
    if prec in _FLOATS:
        return t["weight"], None, None
    if prec == "fp8_w8a8":
        return t["weight"], t["scale"].float().reshape(1), None
    assert group is not None
    if prec == "gptq_int4":
        layer = _int4.from_gptq(t["qweight"], t["qzeros"], t["scales"], group, t.get("g_idx"))
    else:
        layer = _int4.from_awq(t["qweight"], t["qzeros"], t["scales"], group)
    w, s, z = _int4.to_moe_layout([layer])
    return w[0], s[0], z[0]


def _cat_rows(parts: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]], precision: str
              ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
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
    z = torch.cat([zg, zu]) if zg is not None and zu is not None else None  # packed along N: both halves even
    return w, scale, z


def _check_load_args(device: Any, dtype: Any) -> torch.device:
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise InvalidInputError("dtype", "the activation dtype: torch.bfloat16, torch.float16 or torch.float32",
                                describe(dtype))
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError("device", "a torch.device or device string", describe(device)) from None


def load_moe_weights(
    checkpoint: str | pathlib.Path,
    mapping: Mapping[str, Any] | str | pathlib.Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor, QuantConfig | MixedQuantConfig]:
    """Load a MoE layer's experts: ``(w1 [E, 2I, H'], w2 [E, H, I'], quant_config)``.

    ``dtype``: the activation dtype (bf16, fp16 or fp32): float weights are cast to it, int4
    scales too. The quant config is a [`QuantConfig`][moecompat.QuantConfig] when both
    projections share a precision, else a [`MixedQuantConfig`][moecompat.MixedQuantConfig]
    (reference backend).
    """
    dev = _check_load_args(device, dtype)
    m, where = _load_mapping(mapping)
    if "num_experts" not in m:
        raise InvalidInputError(where, "a 'num_experts' entry", f"keys {sorted(map(str, m))}")
    num_experts = check_int(f"{where}.num_experts", m["num_experts"], minimum=1)
    specs = _specs(m, where)
    ck = _Checkpoint(checkpoint)
    return _load_experts(ck, list(range(num_experts)), specs, dev, dtype, where)


def load_per_expert_moe_weights(
    checkpoint: str | pathlib.Path,
    mapping: Mapping[str, Any] | str | pathlib.Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> PerExpertQuantConfig:
    """Load a MoE layer whose experts have different precisions: a
    [`PerExpertQuantConfig`][moecompat.PerExpertQuantConfig] (pass it to
    ``fused_experts(x, None, None, ...)``).

    The mapping lists groups of experts, each with the ``w13``/``w2`` entries of
    [`load_moe_weights`][moecompat.loader.load_moe_weights] (``{expert}`` is the global id):

    ```yaml
    num_experts: 8
    groups:
      - experts: [0, 1, 2, 3]
        w13: {precision: fp8_w8a8, gate: "experts.{expert}.gate_proj", up: "experts.{expert}.up_proj"}
        w2: {precision: fp8_w8a8, down: "experts.{expert}.down_proj"}
      - experts: [4, 5, 6, 7]
        w13: {precision: gptq_int4, gate: ..., up: ..., group_size: 128}
        w2: {precision: bf16, down: ...}
    ```

    Each group's weights are ``[len(experts), ...]`` in the group's order; ids in no group are
    errors at call time (see [`make_per_expert_quant_config`][moecompat.make_per_expert_quant_config]).
    Every group is checked (as for ``load_moe_weights``) before any is read.
    """
    dev = _check_load_args(device, dtype)
    m, where = _load_mapping(mapping)
    for key in ("num_experts", "groups"):
        if key not in m:
            raise InvalidInputError(where, f"a {key!r} entry", f"keys {sorted(map(str, m))}")
    num_experts = check_int(f"{where}.num_experts", m["num_experts"], minimum=1)
    raw_groups = m["groups"]
    if not isinstance(raw_groups, list) or not raw_groups:
        raise InvalidInputError(f"{where}.groups", "a non-empty list of {experts, w13, w2}", describe(raw_groups))
    parsed = []
    owner: dict[int, int] = {}
    for i, g in enumerate(raw_groups):
        gw = f"{where}.groups[{i}]"
        if not isinstance(g, Mapping) or "experts" not in g:
            raise InvalidInputError(gw, "an object {experts, w13, w2}", describe(g))
        ids = g["experts"]
        if not isinstance(ids, list) or not ids:
            raise InvalidInputError(f"{gw}.experts", "a non-empty list of expert ids", describe(ids))
        ids = [check_int(f"{gw}.experts[{j}]", e, minimum=0, maximum=num_experts - 1) for j, e in enumerate(ids)]
        for e in ids:
            if e in owner:
                raise InvalidInputError(f"{gw}.experts", "ids in no other group", f"expert {e}, also in groups[{owner[e]}]")
            owner[e] = i
        parsed.append((ids, _specs(g, gw), gw))
    ck = _Checkpoint(checkpoint)
    for ids, specs, gw in parsed:  # every group checked before any output is allocated
        _plan(ck, ids, specs, gw)
    groups = []
    for ids, specs, gw in parsed:
        w1, w2, qc = _load_experts(ck, ids, specs, dev, dtype, gw)
        groups.append(ExpertGroup(ids, w1, w2, qc))
    return make_per_expert_quant_config(groups, global_num_experts=num_experts)


def _load_experts(
    ck: _Checkpoint, ids: list[int], specs: dict[str, dict[str, Any]], device: torch.device, dtype: torch.dtype,
    where: str,
) -> tuple[torch.Tensor, torch.Tensor, QuantConfig | MixedQuantConfig]:
    """Stack experts ``ids`` (global ids, substituted for ``{expert}``) in that order."""
    _, _, plans = _plan(ck, ids, specs, where)
    out: dict[str, list[torch.Tensor | None]] = {}
    with contextlib.ExitStack() as stack:
        rd = _Reader(stack)
        for proj in ("w13", "w2"):
            prec, group = specs[proj]["precision"], specs[proj]["group_size"]
            tensors: list[torch.Tensor | None] = [None, None, None]
            for j, row in enumerate(plans[proj]):
                parts = [_read_linear(ck, rd, prec, lin, group) for lin in row]
                w, s, z = _cat_rows(parts, prec) if len(parts) == 2 else parts[0]
                if prec in _FLOATS:
                    w = w.to(dtype)
                elif prec in _INT4 and s is not None:
                    s = s.to(dtype)
                for i, t in enumerate((w, s, z)):
                    if t is None:
                        continue
                    if j == 0:
                        tensors[i] = torch.empty((len(ids), *t.shape), dtype=t.dtype, device=device)
                    tensors[i][j].copy_(t)  # type: ignore[index]
                del w, s, z, parts
            out[proj] = tensors
    w1, s1, z1 = out["w13"]
    w2, s2, z2 = out["w2"]
    assert w1 is not None and w2 is not None

    def cfg(prec: str, scale: torch.Tensor | None, zp: torch.Tensor | None, group: int | None) -> QuantConfig:
        if prec in _FLOATS:
            return make_quant_config(None)
        if prec == "fp8_w8a8":
            assert scale is not None
            return make_quant_config("fp8_w8a8", w1_scale=scale.reshape(-1), w2_scale=scale.reshape(-1))
        return make_quant_config("int4_w4a16", w1_scale=scale, w2_scale=scale, w1_zp=zp, w2_zp=zp, group_size=group)

    c13 = cfg(specs["w13"]["precision"], s1, z1, specs["w13"]["group_size"])
    c2 = cfg(specs["w2"]["precision"], s2, z2, specs["w2"]["group_size"])
    same = specs["w13"]["precision"] == specs["w2"]["precision"] and specs["w13"]["group_size"] == specs["w2"]["group_size"]
    if same:
        if c13.scheme is None:
            return w1, w2, c13
        return w1, w2, make_quant_config(c13.scheme, w1_scale=c13.w1_scale, w2_scale=c2.w2_scale, w1_zp=c13.w1_zp,
                                         w2_zp=c2.w2_zp, group_size=c13.group_size)
    return w1, w2, MixedQuantConfig(c13, c2)
