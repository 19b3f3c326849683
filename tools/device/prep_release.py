#!/usr/bin/env python3
"""Lay out one engine release for the GPU machine, as ``tools/device/bundle.py`` takes it.

    python3 tools/device/prep_release.py vllm 0.24.0 .gpu/rel/vllm-0.24.0
    python3 tools/device/prep_release.py sglang 0.5.17 .gpu/rel/sglang-0.5.17
    python3 tools/device/prep_release.py vllm 0.28.0 .gpu/rel/vllm-0.28.0 --torch 2.13.0

Writes ``DEST/site`` (the engine wheel unzipped, minus what its MoE, quantization and model-config
paths never load on an SM 9.0 GPU), ``DEST/wheels`` (cp312 wheels of the import chain's packages
that the device image lacks or has at another version), ``DEST/engine`` and, where needed,
``DEST/env``. The device (see docs/gpu.md): Python 3.12, torch 2.11.0+cu130, triton 3.6.0,
transformers 5.17.0, tokenizers 0.23.2, huggingface_hub 1.33.0, no network. The lists below are
the ones the 2026-12-02 H200 runs used (docs/results/gpu); a release outside them may need more.
"""

from __future__ import annotations

import argparse
import fnmatch
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

import tomllib

PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 18, 24, 26, 27, 28, 31, 34, 35)] + ["manylinux2014_x86_64"]

VLLM_DROP = [
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",  # the pre-Hopper attention fallback (FA3 on SM 9.0)
    "vllm/vllm-rs",
    "vllm/third_party/fmha_sm100/*",
    *(f"vllm/third_party/deep_gemm/_C.cpython-3{m}-*" for m in ("10", "11", "13", "14")),
]
VLLM_DEPS = [
    "pyzmq==27.3.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
    "cbor2==6.3.0", "openai-harmony==0.0.8", "openai==3.57.0", "httpx2==2.16.2", "httpcore2==2.16.2",
    "truststore==0.10.5", "jiter==0.19.0", "distro==1.9.0", "msgspec==0.22.0", "cachetools==8.0.2", "pybase64==1.5.1",
    "blake3==1.0.11", "partial-json-parser==0.2.1.1.post7", "typing_extensions==4.16.0", "anyio==4.16.0", "h11==0.16.0",
    "idna==3.20", "sniffio==1.3.1", "packaging==26.3", "gguf==0.19.0", "fastapi==0.136.3", "starlette==1.10.0",
    "llguidance==1.7.6", "xgrammar==0.2.8", "apache-tvm-ffi==0.1.15.post2",
]

SGLANG_DROP = ["sglang/multimodal_gen/*", "sglang/test/*", "tools/*", "sglang/srt/*_core.cpython-*.so"]
SGL_KERNEL_KEEP = ["sgl_kernel/*.py", "sgl_kernel/sm90/common_ops*", "sglang_kernel-*.dist-info/*"]
SGLANG_DEPS = [
    "annotated-types==0.8.0", "dill==0.4.1", "distro==1.9.0", "gguf==0.19.0",
    "ipython==9.18.1", "jiter==0.19.0", "loguru==0.7.3", "msgspec==0.23.0", "openai==2.6.1", "orjson==3.13.0",
    "partial-json-parser==0.2.1.1.post7", "pybase64==1.5.1", "pydantic==2.14.4", "pydantic_core==2.50.5",
    "pyzmq==27.3.0", "sniffio==1.3.1", "starlette==1.10.0", "traitlets==5.16.1",
    "typing_extensions==4.16.0", "typing-inspection==0.4.5",
]
# Per release: transformers, tokenizers and compressed-tensors as the CPU matrix verified them
# (the [sglang.pins] table of tests/engines/envs.toml, the one list of them: a release's own row or
# the latest earlier one), and apache-tvm-ffi within the release's range (releases not listed
# take the last row's; 0.5.18 and 0.5.21 pin 0.1.11 themselves). tokenizers goes with
# transformers: 0.5.22's transformers 5.19.0 refuses the 0.22.2 of the rows before it (the first
# H200 run of 0.5.22 and 0.5.23 carried 0.22.2 and failed to import; their passing re-run used
# the device's own 0.23.2, not the row's 0.23.3: docs/gpu.md).
ENVS_TOML = pathlib.Path(__file__).resolve().parents[2] / "tests" / "engines" / "envs.toml"
SGLANG_TVM_FFI = {"0.5.11": "0.1.9", "0.5.12": "0.1.9", "0.5.13.post1": "0.1.9", "0.5.14": "0.1.9",
                  "0.5.15.post1": "0.1.11"}


def _release_key(version: str) -> tuple[int, ...]:
    """0.5.13.post1 -> (0, 5, 13, 1): enough to order the releases these tables name."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


def _sglang_pins(version: str) -> list[str]:
    pins = tomllib.loads(ENVS_TOML.read_text())["sglang"]["pins"]
    # The release's own row, else the latest earlier one (as the CPU matrix's groups apply them).
    rows = [v for v in pins if _release_key(v) <= _release_key(version)]
    if not rows:
        raise SystemExit(f"sglang {version} has no [sglang.pins] row at or before it in {ENVS_TOML}")
    row = max(rows, key=_release_key)
    keep = ("transformers==", "tokenizers==", "compressed-tensors==")
    tvm = SGLANG_TVM_FFI.get(version, SGLANG_TVM_FFI["0.5.15.post1"])
    return [p for p in pins[row] if p.startswith(keep)] + [f"apache-tvm-ffi=={tvm}"]


# What a release imports unguarded on the MoE path, carried at the release's own pin (older
# releases guard xgrammar; only 0.5.17 imports flashinfer there).
SGLANG_UNGUARDED = {"0.5.16": ("xgrammar",), "0.5.17": ("xgrammar", "flashinfer-python")}
SGLANG_UNGUARDED_LATEST = "0.5.17"  # later releases: as this one
# sglang-kernel 0.4.2-0.4.3's common_ops links libnuma.so.1.
SGLANG_LIBNUMA = ("0.5.11", "0.5.12", "0.5.13.post1")


# A release pinning another torch than the device's carries it in DEST/torch-site (first on
# PYTHONPATH there), with what that torch needs newer than the device has (docs/gpu.md, "Past the
# device's torch": NCCL for its missing symbols, torchvision for its operators). The device's other
# CUDA libraries serve it: matrix.py links them into torch-site/nvidia.
TORCH_STACKS = {
    "2.13.0": ["torch==2.13.0", "triton==3.7.1", "nvidia-nccl-cu13==2.29.7", "torchvision==0.28.0"],
    # From the 2.14 wheels' metadata (triton~=3.8.0, NCCL 2.30.7, cuDNN 9.24 not carried); vLLM
    # 0.33.0 and SGLang 0.5.22-0.5.23 ran on them (docs/gpu.md).
    "2.14.0": ["torch==2.14.0", "triton==3.8.0", "nvidia-nccl-cu13==2.30.7", "torchvision==0.29.0"],
    "2.14.1": ["torch==2.14.1", "triton==3.8.0", "nvidia-nccl-cu13==2.30.7", "torchvision==0.29.1"],
}
TORCH_DROP = ["triton/backends/nvidia/bin/ptxas-blackwell", "triton/backends/nvidia/lib/cupti/*.a"]


def _download(reqs: list[str], dest: pathlib.Path) -> None:
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)), "-d", str(dest), *reqs]
    subprocess.run(argv, check=True)


def _unzip(wheel: pathlib.Path, site: pathlib.Path, keep=lambda name: True) -> int:
    kept = 0
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not keep(info.filename):
                continue
            z.extract(info, site)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                (site / info.filename).chmod(mode)
            kept += info.file_size
    return kept


def _requires(wheel: pathlib.Path, name: str) -> str | None:
    """The version ``wheel`` pins ``name`` to (``Requires-Dist: name==X``), if it does."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            pattern = "[-_.]".join(map(re.escape, re.split(r"[-_.]", name)))  # PEP 503: - _ . are one
            m = re.match(rf"Requires-Dist: {pattern}(\[[^]]*\])?\s*==\s*([^\s;,]+)\s*$", line, re.IGNORECASE)
            if m:
                return m.group(2)
    return None


def _libnuma(dest: pathlib.Path, tmp: pathlib.Path) -> None:
    """Debian's libnuma.so.1 beside the release: sglang-kernel 0.4.2-0.4.3's common_ops links it, and
    the device image may lack it (a fallback, on LD_LIBRARY_PATH before the device's own)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", "libnuma1"], cwd=tmp, check=True, capture_output=True)
        deb = next(tmp.glob("libnuma1_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "numa")], check=True)
        lib = next((tmp / "numa").rglob("libnuma.so.1*"))
        shutil.copy(lib.resolve(), dest / "libnuma.so.1")
    except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
        print(f"warning: no libnuma.so.1 carried ({exc!r}); the device's own must do")


def _torch_site(torch_version: str, dest: pathlib.Path, tmp: pathlib.Path) -> int:
    if torch_version not in TORCH_STACKS:
        raise SystemExit(f"no carried stack known for torch {torch_version}: add it to TORCH_STACKS")
    dl = tmp / "torch"
    dl.mkdir()
    _download(TORCH_STACKS[torch_version], dl)
    return sum(_unzip(w, dest, lambda n: not any(fnmatch.fnmatch(n, p) for p in TORCH_DROP)) for w in dl.glob("*.whl"))


def prep(engine: str, version: str, dest: pathlib.Path, torch_version: str | None = None) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    site, wheels = dest / "site", dest / "wheels"
    site.mkdir(parents=True)
    wheels.mkdir()
    (dest / "engine").write_text(engine + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        dl = pathlib.Path(tmp)
        _download([f"{engine}=={version}"], dl)
        wheel = next(dl.glob(f"{engine}-*.whl"))
        if engine == "vllm":
            kept = _unzip(wheel, site, lambda n: not any(fnmatch.fnmatch(n, p) for p in VLLM_DROP))
            _download(VLLM_DEPS, wheels)
        else:
            kept = _unzip(wheel, site, lambda n: not any(fnmatch.fnmatch(n, p) for p in SGLANG_DROP))
            kernel = _requires(wheel, "sglang-kernel")
            if kernel is None:
                raise SystemExit(f"sglang {version} pins no sglang-kernel")
            _download([f"sglang-kernel=={kernel}"], dl)
            kw = next(dl.glob("sglang_kernel-*.whl"))
            kept += _unzip(kw, site, lambda n: any(fnmatch.fnmatch(n, p) for p in SGL_KERNEL_KEEP))
            extra = _sglang_pins(version)
            latest = _release_key(version) > _release_key(SGLANG_UNGUARDED_LATEST)
            for name in SGLANG_UNGUARDED.get(version, SGLANG_UNGUARDED[SGLANG_UNGUARDED_LATEST] if latest else ()):
                pin = _requires(wheel, name)
                if pin:
                    extra.append(f"{name}=={pin}")
            _download(SGLANG_DEPS + extra, wheels)
            if version in SGLANG_LIBNUMA:
                _libnuma(site / "_syslib", dl)
                (dest / "env").write_text("LD_LIBRARY_PATH={rel}/site/_syslib:$LD_LIBRARY_PATH\n")
        if torch_version:
            kept += _torch_site(torch_version, dest / "torch-site", dl)
    print(f"{dest}: {kept / 2**20:.0f} MiB unzipped, {len(list(wheels.glob('*.whl')))} wheels")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("engine", choices=["vllm", "sglang"])
    ap.add_argument("version")
    ap.add_argument("dest", type=pathlib.Path)
    ap.add_argument("--torch", default=None, help="carry this torch (the release's pin) into DEST/torch-site")
    args = ap.parse_args()
    prep(args.engine, args.version, args.dest, args.torch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
