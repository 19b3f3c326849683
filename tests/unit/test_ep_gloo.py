"""Expert parallelism over 2 processes (gloo, CPU, reference backend): the all-reduced per-rank
outputs equal the single-rank output."""

from __future__ import annotations

import pytest

from benchmarks import ep_fused_moe


@pytest.mark.parametrize("placement", ["linear", "round_robin"])
@pytest.mark.parametrize("shape,dtype", [("tiny", "fp32"), ("tiny", "fp8_w8a8"), ("deepseek-tiny", "bf16")])
def test_two_ranks_equal_one(placement, shape, dtype):
    res = ep_fused_moe.run(["--world-size", "2", "--device", "cpu", "--shape", shape, "--dtype", dtype,
                            "--placement", placement, "--backend", "reference", "--tokens", "1", "7", "33"])
    assert [r["tokens"] for r in res["rows"]] == [1, 7, 33]
    for r in res["rows"]:
        assert r["ok"], r
