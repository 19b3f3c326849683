"""moecompat bench / tune / plot on CPU: parsing, shapes, search space, strategies, files, Ray."""

from __future__ import annotations

import json
import math

import pytest

from moecompat import cli
from moecompat.bench import PRESETS, MoEShape, shape_from_config
from moecompat.tune import (
    PARAM_GRID,
    exhaustive_search,
    prune_for_batch,
    search_space,
    shared_memory_bytes,
    smart_search,
    write_engine_config,
)


def _write(tmp_path, cfg):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_presets_cover_the_named_models():
    assert {"mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b"} <= set(PRESETS)
    assert PRESETS["mixtral-8x7b"] == MoEShape(8, 2, 4096, 14336, name="mixtral-8x7b")
    assert PRESETS["gpt-oss-120b"].activation == "swigluoai"


def test_config_json_reading(tmp_path):
    mixtral = {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_size": 4096,
               "intermediate_size": 14336}
    assert shape_from_config(_write(tmp_path, mixtral)) == MoEShape(8, 2, 4096, 14336, name="mixtral")
    ds = {"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8, "hidden_size": 7168,
          "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_group": 8, "topk_group": 4}
    s = shape_from_config(tmp_path)  # a folder works too (reads the file written above)
    assert s.num_experts == 8
    s = shape_from_config(_write(tmp_path, ds))
    assert (s.num_experts, s.top_k, s.hidden_size, s.intermediate_size, s.num_expert_group, s.topk_group) == (256, 8, 7168, 2048, 8, 4)
    oss = {"model_type": "gpt_oss", "num_local_experts": 128, "experts_per_token": 4, "hidden_size": 2880, "intermediate_size": 2880}
    assert shape_from_config(_write(tmp_path, oss)).activation == "swigluoai"


def test_shard_by_tp_and_ep():
    s = PRESETS["mixtral-8x7b"].shard(tp_size=2, ep_size=4)
    assert (s.num_experts, s.intermediate_size) == (2, 7168)


@pytest.mark.parametrize("argv,fragment", [
    (["bench", "--preset", "mixtral-9x9b"], "--preset"),
    (["bench", "--preset", "mixtral-8x7b", "--batch-size", "0", "4"], "--batch-size"),
    (["bench", "--preset", "mixtral-8x7b", "--tp-size", "3"], "tp_size"),
    (["bench", "--num-experts", "8"], "four positive integers"),
    (["bench", "--preset", "mixtral-8x7b", "--num-experts", "8", "--top-k", "2", "--hidden-size", "8", "--intermediate-size", "8"], "exactly one"),
    (["tune", "--preset", "mixtral-8x7b", "--engine", "reference"], "reference backend runs no Triton kernel"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, fragment):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_config_without_moe_fields_exits_2(tmp_path, capsys):
    path = _write(tmp_path, {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008})
    assert cli.main(["bench", "--model", str(path), "--engine", "reference"]) == 2
    err = capsys.readouterr().err
    assert "number of experts" in err and "experts per token" in err


def test_engine_not_installed_exits_2(capsys):
    from moecompat.engines import ENGINES

    if ENGINES["sglang"].version() is not None:
        pytest.skip("sglang is installed here")
    assert cli.main(["bench", "--preset", "mixtral-8x7b", "--engine", "sglang"]) == 2
    assert "not installed" in capsys.readouterr().err


def test_dtype_choice_is_validated():
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--preset", "mixtral-8x7b", "--dtype", "fp7"])
    assert info.value.code == 2


def test_search_space_generation_and_pruning():
    full = search_space("bf16", smem_limit=10**9)
    assert len(full) == math.prod(len(v) for v in PARAM_GRID.values())
    space = search_space("bf16")
    assert 0 < len(space) < len(full)
    assert all(shared_memory_bytes(c, 2, 2) <= 232448 for c in space)
    block = search_space("fp8_w8a8_block", block_shape=[128, 128])
    assert block and all(128 % c["BLOCK_SIZE_N"] == 0 and 128 % c["BLOCK_SIZE_K"] == 0 for c in block)
    small = prune_for_batch(space, batch_size=1, top_k=2, num_experts=8)
    assert small and max(c["BLOCK_SIZE_M"] for c in small) <= 32 and all(c["GROUP_SIZE_M"] <= 4 or c["GROUP_SIZE_M"] == 1 for c in small)
    big = prune_for_batch(space, batch_size=4096, top_k=2, num_experts=8)
    assert max(c["BLOCK_SIZE_M"] for c in big) == 256


def _cost(cfg, batch):
    """A synthetic, smooth latency model with a batch-dependent optimum (tests the search itself)."""
    best_m = min(256, max(16, 1 << max(0, (batch * 2 // 8 - 1)).bit_length()))
    return (abs(math.log2(cfg["BLOCK_SIZE_M"] / best_m)) + abs(math.log2(cfg["BLOCK_SIZE_N"] / 64))
            + abs(math.log2(cfg["BLOCK_SIZE_K"] / 128)) + 0.3 * abs(cfg["num_stages"] - 4) + 0.2 * (cfg["num_warps"] == 8)
            + 0.1 * abs(math.log2(cfg["GROUP_SIZE_M"] / 16 + 1e-9)) * (batch > 64) + 1.0)


def test_smart_search_finds_the_exhaustive_optimum_with_fewer_configs():
    space = search_space("bf16")
    batches = [1, 16, 64, 256, 1024, 4096]
    exh, n_exh = exhaustive_search(_cost, space, batches)
    smart, n_smart = smart_search(_cost, space, batches, top_k=2, num_experts=8,
                                  starts=lambda b: [{"BLOCK_SIZE_M": 64, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 64, "GROUP_SIZE_M": 1,
                                                     "num_warps": 8, "num_stages": 3}])
    for b in batches:
        assert smart[b].best_ms <= exh[b].best_ms * 1.02, (b, smart[b], exh[b])
    assert n_smart * 3 <= n_exh, (n_smart, n_exh)


def test_failing_configs_are_treated_as_slow():
    def flaky(cfg, batch):
        if cfg["BLOCK_SIZE_N"] == 256:
            raise RuntimeError("OutOfResources: shared memory")
        return _cost(cfg, batch)

    res, _ = exhaustive_search(flaky, search_space("bf16")[:200], [16])
    assert res[16].best["BLOCK_SIZE_N"] != 256 and math.isfinite(res[16].best_ms)


def test_write_engine_config_reference_naming(tmp_path):
    cfg = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128, "GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 4}
    path, env = write_engine_config({1: cfg, 64: cfg}, 8, 14336, "fp8_w8a8", None, "reference", str(tmp_path))
    assert path.name == "E=8,N=14336,device_name=cpu,dtype=fp8_w8a8.json"
    data = json.loads(path.read_text())
    assert data["1"] == cfg and set(data) == {"1", "64"}
    path, _ = write_engine_config({1: cfg}, 256, 2048, "fp8_w8a8_block", [128, 128], "reference", str(tmp_path))
    assert path.name == "E=256,N=2048,device_name=cpu,dtype=fp8_w8a8,block_shape=[128,128].json"


def test_bench_end_to_end_reference_and_plot(tmp_path, capsys):
    out = tmp_path / "res"
    rc = cli.main(["bench", "--num-experts", "4", "--top-k", "2", "--hidden-size", "32", "--intermediate-size", "16",
                   "--engine", "reference", "--batch-size", "1", "3", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [r["batch_size"] for r in doc["results"]] == [1, 3]
    assert all(r["latency_ms"] > 0 and r["tflops"] > 0 for r in doc["results"])
    assert doc["meta"]["backend"] == "reference" and doc["meta"]["shape"]["num_experts"] == 4
    csv = out.with_suffix(".csv").read_text().splitlines()
    assert len(csv) == 3 and "latency_ms" in csv[0]
    assert cli.main(["plot", str(out.with_suffix(".json")), "--out-dir", str(tmp_path / "plots")]) == 0
    png = tmp_path / "plots" / "latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_quantized_reference(tmp_path):
    out = tmp_path / "q"
    for dtype in ("int4_w4a16", "fp8_w8a8", "mxfp4_w4a16"):
        assert cli.main(["bench", "--num-experts", "4", "--top-k", "2", "--hidden-size", "128", "--intermediate-size", "128",
                         "--engine", "reference", "--dtype", dtype, "--batch-size", "2", "--out", str(out)]) == 0
        assert json.loads(out.with_suffix(".json").read_text())["meta"]["dtype"] == dtype


def test_ray_path_runs_reference_backend(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        rc = cli.main(["bench", "--num-experts", "4", "--top-k", "2", "--hidden-size", "32", "--intermediate-size", "16",
                       "--engine", "reference", "--batch-size", "1", "2", "4", "--ray", "--workers", "2", "--out", str(out)])
        assert rc == 0
        rows = json.loads(out.with_suffix(".json").read_text())["results"]
        assert [r["batch_size"] for r in rows] == [1, 2, 4]
    finally:
        ray.shutdown()
