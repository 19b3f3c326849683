"""A Mixtral-shaped MoE layer (scaled down) through moecompat, checked against a naive loop.

    python examples/demo.py
"""

import time

import moecompat as mc  # first: it keeps torch's NumPy warning from the output
import torch

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
T, E, K, H, I = 64, 8, 2, 512, 1024  # tokens, experts, top-k, hidden, intermediate

x = torch.randn(T, H, device=device, dtype=dtype)
w1 = torch.randn(E, 2 * I, H, device=device, dtype=dtype) / H**0.5  # [E, 2I, H]: gate rows, then up
w2 = torch.randn(E, H, I, device=device, dtype=dtype) / I**0.5      # [E, H, I]
router_logits = torch.randn(T, E, device=device)

topk = mc.select_experts(x, router_logits, K)
t0 = time.perf_counter()
out = mc.fused_experts(x, w1, w2, topk.topk_weights, topk.topk_ids)
if device == "cuda":
    torch.cuda.synchronize()
elapsed = (time.perf_counter() - t0) * 1e3

ref = torch.zeros(T, H, dtype=torch.float64, device=device)
for t in range(T):
    for j in range(K):
        e = int(topk.topk_ids[t, j])
        h = w1[e].double() @ x[t].double()
        a = torch.nn.functional.silu(h[:I]) * h[I:]
        ref[t] += topk.topk_weights[t, j].double() * (w2[e].double() @ a)
err = ((out.double() - ref).norm() / ref.norm()).item()

info = mc.engine_info()
backend = info.auto_backend["fused_experts"][0] if device == "cuda" else info.auto_backend_cpu["fused_experts"]
print(f"fused_experts on {device} ({dtype}), backend {backend!r}: out {tuple(out.shape)}, "
      f"{elapsed:.2f} ms, relative error vs naive float64 loop {err:.2e}")

q1, q2, qc = mc.quant.quantize_moe_weights(w1.float(), w2.float(), "fp8_w8a8", block_shape=[128, 128])
out8 = mc.fused_experts(x, q1, q2, *topk, quant_config=qc)
err8 = ((out8.double() - ref).norm() / ref.norm()).item()
print(f"fp8_w8a8 block[128,128] ({qc.describe()}): relative error {err8:.2e}")
assert err < 2e-2 and err8 < 1e-1
