"""On the GPU machine: does a carried torch (first on PYTHONPATH) work there? Prints its versions,
the NCCL and cuDNN it loaded, and runs a bf16 matmul, a Triton kernel and an inductor-compiled
function on the GPU. A file, not a heredoc: ``@triton.jit`` needs its function's source file."""

import torch
import triton
import triton.language as tl

print("torch", torch.__version__, torch.__file__, "cuda", torch.version.cuda, "triton", triton.__version__)
print("nccl", torch.cuda.nccl.version())
try:
    print("cudnn", torch.backends.cudnn.version())
except RuntimeError as exc:  # an older cuDNN than torch's own: refused here, never reached by MoE kernels
    print("cudnn refused:", str(exc).splitlines()[0])
print("gpu", torch.cuda.get_device_name(0), torch.cuda.is_available())
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
print("matmul max abs diff vs float32:", ((a @ a).float() - a.float() @ a.float()).abs().max().item())


@triton.jit
def _add_one(x, y, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y + o, tl.load(x + o, mask=o < n) + 1, mask=o < n)


x = torch.arange(1000, device="cuda", dtype=torch.float32)
y = torch.empty_like(x)
_add_one[(4,)](x, y, 1000, BLOCK=256)
print("triton kernel ok:", bool((y == x + 1).all()))
f = torch.compile(lambda t: torch.nn.functional.silu(t) * 2, fullgraph=True)
print("inductor ok:", torch.allclose(f(x), torch.nn.functional.silu(x) * 2))
