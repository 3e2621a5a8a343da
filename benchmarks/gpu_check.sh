#!/usr/bin/env bash
# Everything mnistlab checks on a lent GPU machine, in one call (docs/speed.md, "GPU"):
#   1. the tests that exercise the device path, now on CUDA (real CUDA graphs, resume, CLI);
#   2. benchmarks/gpu_bench.py: the report's run and the speedrun, timed;
#   3. optionally (STUDY_SECONDS > 0) the augmented-MLP study runs, 3 seeds in parallel, packed per seed.
# Usage on the machine: OUT=DIR [STUDY_SECONDS=300] [STUDY_CONFIGS="mlp_aug_best ..."] [DEADLINE=540] \
#   bash benchmarks/gpu_check.sh      (the study stops, Ctrl-C style, by DEADLINE seconds after the start)
# Needs python3 with torch (CUDA), numpy, matplotlib, tqdm, safetensors, pillow, pytest; tomli-w may come as
# a wheel in .whl/.
set -u -o pipefail
START=$SECONDS
OUT=${OUT:-/tmp/gpu_out}
STUDY_SECONDS=${STUDY_SECONDS:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
CHECKS=0
if [ -z "${SKIP_CHECKS:-}" ]; then
  {
    failed=0
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || failed=1
    echo "== tests on the GPU"
    # any pytest failure fails the script, including 4 (a named file is missing) and 5 (nothing collected)
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cudagraphs.py tests/test_resume.py tests/test_cli.py \
      tests/test_fused.py tests/test_device_path.py || { echo "== tests FAILED (pytest exit $?)"; failed=1; }
    echo "== gpu_bench"
    timeout 300 python3 benchmarks/gpu_bench.py --out "$OUT" || { echo "== gpu_bench FAILED (exit $?)"; failed=1; }
    exit $failed
  } 2>&1 | tee "$OUT/gpu_check.log"
  CHECKS=$?  # the block's status, not tee's (pipefail)
fi

LEFT=$(( ${DEADLINE:-540} - (SECONDS - START) ))
[ "$LEFT" -lt "$STUDY_SECONDS" ] && STUDY_SECONDS=$LEFT
if [ "$STUDY_SECONDS" -gt 0 ]; then
  echo "== study runs (at most $STUDY_SECONDS s)" | tee -a "$OUT/gpu_check.log"
  S=/tmp/study_best
  for cfg in ${STUDY_CONFIGS:-mlp_aug_best}; do
    for seed in 123 124 125; do
      OMP_NUM_THREADS=2 timeout -s INT "$STUDY_SECONDS" python3 -m mnistlab train --config "experiments/$cfg.toml" --seed $seed \
        --quiet --out "$S/$cfg/seed$seed" > "/tmp/$cfg-$seed.log" 2>&1 &
    done
  done
  wait
  for seed in 123 124 125; do
    tail -n 3 /tmp/*-$seed.log | tee -a "$OUT/gpu_check.log"
    (cd $S && tar -czf "$OUT/study_seed$seed.tgz" --exclude checkpoint.safetensors */seed$seed)
  done
  ls -la "$OUT" | tee -a "$OUT/gpu_check.log"
fi
exit $CHECKS
