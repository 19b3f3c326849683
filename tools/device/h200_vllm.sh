#!/usr/bin/env bash
# The GPU runs behind docs/results/gpu and docs/performance.md, on the lent H200 (no network).
#
# Here, once: the wheel unzipped into .gpu/site (vllm/, its dist-info, _deps/ with the cp312 wheels of its
# import chain), minus what the MoE, quantization and model-config paths never load, then
#   python3 ../shared/tools/device/pack.py .gpu/parts .gpu/site        (writes .gpu/parts/00N)
# There, one call per part (carry .gpu/parts/00N), the machine kept warm between calls:
#   bash tools/device/h200_vllm.sh stage 1      ... stage N-1
#   bash tools/device/h200_vllm.sh stage N suite          # unpack, install, GPU suite
#   bash tools/device/h200_vllm.sh bench                  # roofline, bench, tune, overhead
# A release that pins another torch than the device's: its torch, triton and the CUDA libraries the
# device lacks go first, as their own parts (.gpu/partsT/00N) into TORCH_SITE, then the release:
#   PARTS=.gpu/partsT STAGE=/tmp/stT bash tools/device/h200_vllm.sh stage 1 ... N
#   STAGE=/tmp/stT TORCH_SITE=/tmp/torch-site bash tools/device/h200_vllm.sh torch
#       (unpack, link the device's other CUDA libraries beside it, check torch, triton and inductor)
#   TORCH_SITE=/tmp/torch-site bash tools/device/h200_vllm.sh stage 1 ... / stage N suite
# Every result lands in $OUT (or ./out when OUT is unset) with the GPU's name inside it.
set -u
FINAL=${OUT:-$PWD/out}
# At most 8 files come back from the device: everything goes into $RES, tarred into one at the end.
RES=/tmp/moecompat-results
OUT=$RES
mkdir -p "$FINAL"
STAGE=${STAGE:-/tmp/moecompat-stage}
PARTS=${PARTS:-.gpu/parts}
SITE=/tmp/moecompat-site
mkdir -p "$OUT" "$STAGE"

env_up() {
    export PYTHONPATH="${TORCH_SITE:+$TORCH_SITE:}$SITE/site:$SITE/deps:$PWD" PYTHONUNBUFFERED=1
}

stage() {
    cp "$PARTS"/"$(printf %03d "$1")"/* "$STAGE"/ && ls -la "$STAGE"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
}

install() {
    python3 "$STAGE"/unpack.py "$STAGE" "$SITE" || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE/deps" "$SITE"/site/_deps/*.whl || exit 1
    env_up
    python3 -c "import torch, triton, vllm; print('torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name(0))"
}

suite() {
    env_up
    local v
    v=$(python3 -c "import vllm; print(vllm.__version__)")
    python3 -m moecompat doctor --json > "$OUT/doctor-vllm-$v.json" 2> "$OUT/doctor-vllm-$v.log"
    set -o pipefail
    [ "${SWEEP:-0}" = 1 ] && timeout 200 python3 tools/device/numerics_sweep.py --engine vllm --json "$OUT/numerics-sweep-vllm-$v.json" 2>&1 \
        | grep -v "^INFO\|^WARNING" | tail -20
    timeout 420 python3 -m pytest tests/gpu --engine vllm -p no:cacheprovider -q -rfE --durations=5 \
        --gpu-results "$OUT/gpu-vllm-$v.json" 2>&1 | tee "$OUT/pytest-vllm-$v.log" | grep -v "^$" | tail -60
}

bench() {
    env_up
    local v
    v=$(python3 -c "import vllm; print(vllm.__version__)")
    python3 - "$OUT/bandwidth.json" <<'PY'
import json, sys, torch
from moecompat.bench import copy_bandwidth_gbs, read_bandwidth_gbs, spec_bandwidth_gbs
d = {"gpu": torch.cuda.get_device_name(0), "spec_gbs": spec_bandwidth_gbs("cuda"),
     "read_gbs": read_bandwidth_gbs("cuda"), "copy_gbs": copy_bandwidth_gbs("cuda")}
print(d); json.dump(d, open(sys.argv[1], "w"), indent=1)
PY
    for dtype in bf16 fp8_w8a8 fp8_w8a8_block; do
        timeout 150 python3 -m moecompat bench --preset mixtral-8x7b --engine vllm --dtype $dtype --no-progress \
            --batch-size 1 16 64 256 1024 4096 --out "$OUT/bench-mixtral-$dtype" 2>&1 | tail -12
    done
    mkdir -p /tmp/tuned
    timeout 200 python3 -m moecompat tune --preset mixtral-8x7b --engine vllm --dtype fp8_w8a8 --no-progress \
        --batch-size 1 16 64 --workers 1 --config-dir /tmp/tuned --out "$OUT/tune-mixtral-fp8_w8a8" 2>&1 | tail -12
    cp /tmp/tuned/*.json "$OUT/" 2>/dev/null
    VLLM_TUNED_CONFIG_FOLDER=/tmp/tuned timeout 100 python3 -m moecompat bench --preset mixtral-8x7b --engine vllm \
        --dtype fp8_w8a8 --no-progress --batch-size 1 16 64 --out "$OUT/bench-mixtral-fp8_w8a8-tuned" 2>&1 | tail -8
    timeout 120 python3 benchmarks/overhead.py --device cuda --calls 100000 --json "$OUT/overhead-cuda.json" 2>&1 | tail -6
}

overhead() {
    env_up
    timeout 120 python3 benchmarks/overhead.py --device cuda --calls 100000 --json "$OUT/overhead-cuda.json" 2>&1 | tail -6
    timeout 60 python3 benchmarks/overhead.py --device cpu --calls 100000 --no-compile --json "$OUT/overhead-cpu-on-gpu-host.json" 2>&1 | tail -4
}

torch_site() {
    # The device's own CUDA libraries (nvidia/*) serve the carried torch except where it needs a newer one
    # (carried beside it): link each missing nvidia/<lib> folder from the image's site-packages.
    local sys_site
    sys_site=$(python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
    python3 "$STAGE"/unpack.py "$STAGE" "$TORCH_SITE" || exit 1
    for d in "$sys_site"/nvidia/*/; do
        [ -e "$TORCH_SITE/nvidia/$(basename "$d")" ] || ln -s "$d" "$TORCH_SITE/nvidia/$(basename "$d")"
    done
    set -o pipefail
    PYTHONPATH=$TORCH_SITE python3 tools/device/check_torch_site.py 2>&1 | tee "$OUT/torch-site.log"
}

pack() { (cd "$RES" && tar cf "$FINAL/results.tar" .) && ls -la "$RES"; }

case "$1" in
    stage) stage "$2"; if [ "${3:-}" = suite ]; then install && suite; overhead; fi ;;
    suite) suite; overhead ;;
    bench) bench ;;
    torch) torch_site ;;
    *) echo "usage: $0 stage N [suite] | suite | bench | torch"; exit 2 ;;
esac
rc=$?
pack
exit $rc
