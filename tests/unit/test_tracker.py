"""ExpertActivationTracker: counts, imbalance, JSON and SGLang dump round trips, threads, plots."""

from __future__ import annotations

import math
import threading

import pytest
import torch

import moecompat as mc


def test_counts_and_queries():
    t = mc.ExpertActivationTracker(num_layers=2, num_experts=4)
    t.record(0, torch.tensor([[0, 1], [0, 2], [0, -1]], dtype=torch.int32))  # -1: other rank, ignored
    t.record(1, torch.tensor([[3, 3]]))
    assert t.layer_counts(0).tolist() == [3, 1, 1, 0]
    assert t.layer_counts(1).tolist() == [0, 0, 0, 2]
    assert t.top_experts(0, 2) == [(0, 3), (1, 1)] or t.top_experts(0, 2) == [(0, 3), (2, 1)]
    im = t.imbalance(0)
    assert im["tokens"] == 5 and im["max_over_mean"] == pytest.approx(3 / 1.25)
    p = torch.tensor([3, 1, 1]) / 5
    assert im["entropy"] == pytest.approx(float(-(p * p.log()).sum()))
    assert im["normalized_entropy"] == pytest.approx(im["entropy"] / math.log(4))
    uniform = mc.ExpertActivationTracker(1, 4)
    uniform.record(0, torch.arange(4).reshape(2, 2))
    assert uniform.imbalance(0)["cv"] == 0 and uniform.imbalance(0)["normalized_entropy"] == pytest.approx(1.0)
    t.reset()
    assert t.layer_counts().sum() == 0


def test_select_experts_attaches_tracker():
    t = mc.ExpertActivationTracker(3, 8)
    logits = torch.randn(10, 8)
    out = mc.select_experts(torch.zeros(10, 4), logits, 2, tracker=t, layer=2)
    assert t.layer_counts(2).sum() == 20
    assert torch.equal(torch.bincount(out.topk_ids.flatten().long(), minlength=8), t.layer_counts(2))


def test_json_and_sglang_dump_round_trip(tmp_path):
    t = mc.ExpertActivationTracker(2, 5)
    t.record(0, torch.randint(0, 5, (30, 2)))
    t.record(1, torch.randint(0, 5, (30, 2)))
    back = mc.ExpertActivationTracker.from_json(t.to_json())
    assert torch.equal(back.layer_counts(), t.layer_counts())
    t.to_sglang_dump(tmp_path / "dump.pt")
    data = torch.load(tmp_path / "dump.pt", weights_only=False)
    assert data["logical_count"].shape == (1, 2, 5)
    again = mc.ExpertActivationTracker.from_sglang_dump(tmp_path / "dump.pt")
    assert torch.equal(again.layer_counts(), t.layer_counts())
    with pytest.raises(mc.InvalidInputError, match="counts"):
        mc.ExpertActivationTracker.from_json('{"num_layers": 2, "num_experts": 5, "counts": [[1, 2]]}')


def test_thread_safe_recording():
    t = mc.ExpertActivationTracker(1, 16)
    ids = torch.randint(0, 16, (64, 4))

    def work():
        for _ in range(50):
            t.record(0, ids)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.layer_counts(0).sum().item() == 8 * 50 * 64 * 4


def test_bad_input():
    t = mc.ExpertActivationTracker(2, 4)
    with pytest.raises(mc.InvalidInputError, match="layer"):
        t.record(2, torch.zeros(1, 1, dtype=torch.int64))
    with pytest.raises(mc.InvalidInputError, match="topk_ids"):
        t.record(0, torch.zeros(1, 1))
    with pytest.raises(mc.InvalidInputError):
        mc.ExpertActivationTracker(0, 4)


def test_heatmap_via_cli(tmp_path):
    from moecompat import cli

    t = mc.ExpertActivationTracker(4, 16)
    for layer in range(4):
        t.record(layer, torch.randint(0, 16, (100, 2)))
    (tmp_path / "tracker.json").write_text(t.to_json())
    assert cli.main(["plot", str(tmp_path / "tracker.json"), "--out-dir", str(tmp_path)]) == 0
    assert (tmp_path / "tracker_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_record_engine_without_engine_raises():
    from moecompat.engines import ENGINES

    if any(e.version() is not None for e in ENGINES.values()):
        pytest.skip("an engine is installed here; covered by the engine surface tests")
    t = mc.ExpertActivationTracker(1, 4)
    with pytest.raises(mc.UnsupportedFeatureError), t.record_engine():
        pass


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.int16])
def test_out_of_range_ids_are_ignored(dtype):
    t = mc.ExpertActivationTracker(2, 4)
    t.record(1, torch.tensor([[-3, -1], [0, 3], [4, 9], [3, 3]], dtype=dtype))
    assert t.layer_counts(1).tolist() == [1, 0, 0, 3]
    assert t.layer_counts(0).tolist() == [0, 0, 0, 0]
    t.record(1, torch.arange(-2, 3000, dtype=dtype).reshape(-1, 2))  # grows the ones buffer
    assert t.layer_counts(1).tolist() == [2, 1, 1, 4]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
def test_a_device_this_machine_lacks_is_an_input_error():
    """A CPU-only torch raises AssertionError, a CUDA build without a driver RuntimeError; both
    become one InvalidInputError naming the argument."""
    with pytest.raises(mc.InvalidInputError, match="device: expected a device this machine has"):
        mc.ExpertActivationTracker(2, 4, device="cuda")
