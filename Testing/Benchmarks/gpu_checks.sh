#!/usr/bin/env bash
# The GPU checks (issue 14, item 5), in one run on a CUDA machine, from the repository root:
#
#     bash Testing/Benchmarks/gpu_checks.sh OUTDIR [MODELS]
#
# MODELS: a folder holding the synth pipeline (default: Resources/Models).
# 1. the CUDA tests (pytest -m gpu: the runtimes, weight averaging);
# 2. the whole-process benchmark on the GPU: `voxmetric segment --device cuda` vs the MONAI peer
#    on the GPU (bench_segment.py --device cuda: 512x512x200 CT, alternating, median of 3);
# 3. training throughput of the default recipe (MetricUNet-HCP, paper settings: 1 mm, base 32,
#    batch 30, AMP, cudnn.benchmark, 4 pinned loader workers) with `voxmetric train --device cuda`;
# 4. the same under `torchrun --nproc_per_node 1` (DDP on NCCL);
# 5. bench_simsiam.py with the paper-width 3D U-Net vs VoxelSimSiam (16.5 M parameters) on the GPU.
# Everything a step prints goes to OUTDIR (gpu.txt, pytest_gpu.txt, bench_segment_cuda.jsonl,
# train_cuda.jsonl, train_ddp_nccl.jsonl, bench_simsiam_cuda.jsonl); a failing step does not stop the others.
set -u
OUT=${1:-/tmp/voxmetric-gpu-checks}
MODELS=${2:-Resources/Models}
mkdir -p "$OUT"
W=$(mktemp -d)
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
  echo "cpu cores: $(nproc)"
} 2>&1 | tee "$OUT/gpu.txt"

echo "== 1. CUDA tests"
$PY -m pytest -q -p no:cacheprovider -m gpu Testing/Python/test_runtime.py Testing/Python/test_training.py 2>&1 | tail -4 | tee "$OUT/pytest_gpu.txt"

echo "== 2. whole process on the GPU, ours vs the MONAI peer"
$PY Testing/Benchmarks/bench_segment.py --device cuda --repeats 3 --work "$W/bench" --models "$MODELS" 2>&1 \
  | tee "$OUT/bench_segment_cuda.jsonl" | grep -E '"measure": "(summary|ratio)' | cut -c1-400

echo "== 3. training throughput on the GPU (default recipe, AMP, 4 loader workers)"
$PY -m voxmetric phantom --out "$W/ph" --cases 4 --modality ct --seed 0 > /dev/null
train=(train --method MetricUNet-HCP --cases "$W/ph/manifest.json" --device cuda --workers 4 --val-every 100000
       --events-jsonl)
$PY -m voxmetric "${train[@]}" --out "$W/m1" --iterations 300 2>&1 | grep -v '"progress"' > "$OUT/train_cuda.jsonl"
grep -E '"iteration": (100|200|300),|"done"' "$OUT/train_cuda.jsonl" | cut -c1-300

echo "== 4. DDP: torchrun --nproc_per_node 1 (NCCL)"
$PY -m torch.distributed.run --standalone --nproc_per_node 1 -m voxmetric "${train[@]}" --out "$W/m2" \
  --iterations 100 2>&1 | grep -v '"progress"' > "$OUT/train_ddp_nccl.jsonl"
grep -E '"iteration": 100,|"done"|nccl|NCCL|rror' "$OUT/train_ddp_nccl.jsonl" | cut -c1-300

echo "== 5. voxel-level SimSiam vs 3D U-Net, paper widths, on the GPU"
$PY Testing/Benchmarks/bench_simsiam.py --device cuda --methods UNet3D,VoxelSimSiam --iterations 600 --seeds 0,1 \
  --work "$W/simsiam" > "$OUT/bench_simsiam_cuda.jsonl" 2>&1
grep -E '"summary"|"step_time"|"trained"|rror' "$OUT/bench_simsiam_cuda.jsonl" | cut -c1-300
rm -rf "$W"
