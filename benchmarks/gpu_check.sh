#!/usr/bin/env bash
# The GPU check in one call: install what the GPU image lacks from the wheels carried in .whl/ (make gpu-wheels),
# build photo shards (benchmarks/photo_shards.py: real photographs, img2dataset's 256 px JPEG q95 layout), then in
# order: the gpu test tier (a bf16 step per backend; no host sync in a non-logging step of every loss and of FLIP),
# the bench_train table (ViT-B/16, batch 256, bf16, FLIP 50%, 14 workers; ddp, ZeRO-2, FSDP2, ZeRO-3), the photo
# feed (ViT-B/16 at 75% masking fed by 14 workers: CPU decode + device resize, then device decode; trainer/model),
# the model-only comparison with open_clip (eager and compiled), the end-to-end run against open_clip_train, and
# the samples/s cost of a DRRho reference (B/16 steered by a B/32). Each stage has a time limit and the whole check
# a budget (8 minutes);
# a stage that fails or runs out of time is recorded and the next one runs. Results: JSON under $OUT, summed up in
# $OUT/gpu_check.json (with the issue's goals checked); each stage's output in $OUT/<stage>.log.
#
#   OUT=/tmp/check bash benchmarks/gpu_check.sh                    # the GPU machine, from the repository root
#   GPU_CHECK_SMALL=1 OUT=/tmp/check bash benchmarks/gpu_check.sh  # CPU: tiny model, few steps (make test runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the results folder}
SMALL=${GPU_CHECK_SMALL:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
PY=${PYTHON:-python3}
START=$SECONDS
mkdir -p "$OUT"
: > "$OUT/stages.jsonl"

if compgen -G ".whl/*.whl" > /dev/null; then  # the image lacks them: install into .site, first on the path
  "$PY" -m pip install -q --no-index --no-deps --upgrade --target .site .whl/*.whl > "$OUT/install.log" 2>&1
  export PYTHONPATH=$PWD/.site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PEER_WHEELS=()
if compgen -G ".whl/peer/*.whl" > /dev/null; then PEER_WHEELS=(--peer-wheels .whl/peer); fi

# stage NAME LIMIT_S COMMAND...: run under the smaller of its limit and what is left of the budget.
stage() {
  local name=$1 share=$2 left limit rc t0=$SECONDS
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  share=$((share * SCALE))
  limit=$((share < left ? share : left))
  if ((limit < 10)); then
    echo "{\"stage\": \"$name\", \"rc\": null, \"status\": \"skipped: budget spent\"}" >> "$OUT/stages.jsonl"
    return
  fi
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0)), \"limit_s\": $limit}" >> "$OUT/stages.jsonl"
}

if [[ $SMALL == 1 ]]; then
  SCALE=8  # a shared 2-core CPU is slower at the small mode than the GPU at the full one
  SHARDS=$OUT/shards
  SHARD_ARGS=(--samples 320 --shards 4 --layout img2dataset)
  DATA=(--config recipes/configs/demo_fashion_mnist.yaml model.name=tiny data.image_size=32 "data.path=$SHARDS"
        data.batch_size=8 data.workers=1)
  TRAIN=(--steps 2 --rounds 1 --warmup 1 --breakdown-steps 1)
  MODEL=(--model tiny --batch 8 --precision fp32 --mask-ratios 0.5 --variants ours,open_clip --steps 1 --warmup 1
         --repeats 1)
  E2E=(--steps 20 --warmup 5 --log-every 5 --rounds 1)
  FEED=(--config recipes/configs/demo_fashion_mnist.yaml model.name=tiny data.image_size=32 "data.path=$SHARDS"
        data.batch_size=8 data.workers=1 flip.mask_ratio=0.75)
  FEED_RUN=(--steps 2 --rounds 1 --warmup 1 --breakdown-steps 1)
  REFERENCE=(--batch 8 --steps 1 --rounds 1)
else
  SCALE=1
  SHARDS=artifacts/bench_shards
  SHARD_ARGS=(--samples 35840 --shards 28 --layout img2dataset)  # 2 shards (10 batches) for each of 14 peer workers
  DATA=("data.path=$SHARDS" data.batch_size=256 data.workers=14 data.num_samples=null backend.precision=bf16)
  TRAIN=(--config recipes/configs/flip50_laion315m_vitb16_4node.yaml --steps 10 --rounds 5 --warmup 3
         --breakdown-steps 5)
  MODEL=(--model ViT-B-16 --batch 256 --precision bf16 --mask-ratios 0.5 --steps 5 --warmup 2 --repeats 5)
  E2E=(--config recipes/configs/openclip_laion315m_vitb16_1node.yaml --steps 126 --warmup 30 --rounds 1)  # 9 x 14 workers
  FEED=(--config recipes/configs/flip50_laion315m_vitb16_4node.yaml "${DATA[@]}" flip.mask_ratio=0.75)
  FEED_RUN=(--steps 10 --rounds 3 --warmup 3 --breakdown-steps 3)
  REFERENCE=(--gpu-b16 --batch 128 --steps 10 --rounds 3)  # DRRho: B/16 target, B/32 reference, bf16, 75% masked
fi

stage env 30 "$PY" -c "
import json, torch, importlib.metadata as md
info = {'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
        'gpu': torch.cuda.get_device_name() if torch.cuda.is_available() else None}
for name in ('deepspeed', 'open_clip_torch', 'webdataset', 'timm', 'accelerate', 'transformers'):
    try:
        info[name] = md.version(name)
    except md.PackageNotFoundError:
        info[name] = None
json.dump(info, open('$OUT/env.json', 'w'), indent=1)"
if [[ ! -f $SHARDS/manifest.json ]]; then
  stage shards 90 "$PY" benchmarks/photo_shards.py --out "$SHARDS" "${SHARD_ARGS[@]}"
fi
stage gpu_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device_inputs.py \
  --junitxml "$OUT/gpu_tests.xml"
stage bench_train 180 "$PY" benchmarks/bench_train.py "${DATA[@]}" "${TRAIN[@]}" --ranks 1 \
  --backends ddp,zero2,fsdp2,zero3 --out "$OUT/bench_train.json"
# The photo feed: workers decode on the CPU and the device resizes (data.resize: device, the GPU default), then the
# device decodes too (data.decode: device); trainer/model says whether 14 workers keep up with B/16 at 75%.
stage photo_feed_cpu_decode 60 "$PY" benchmarks/bench_train.py "${FEED[@]}" data.resize=device "${FEED_RUN[@]}" \
  --ranks 1 --backends ddp --out "$OUT/photo_feed_cpu_decode.json"
stage photo_feed_device_decode 60 "$PY" benchmarks/bench_train.py "${FEED[@]}" data.resize=device data.decode=device \
  "${FEED_RUN[@]}" --ranks 1 --backends ddp --out "$OUT/photo_feed_device_decode.json"
stage bench_model 100 "$PY" benchmarks/bench_model.py "${MODEL[@]}" --out "$OUT/bench_model.json"
stage bench_e2e 150 "$PY" benchmarks/bench_e2e.py "${DATA[@]}" "${E2E[@]}" --ranks 1 "${PEER_WHEELS[@]}" \
  --out "$OUT/bench_e2e.json"
stage bench_reference 60 "$PY" benchmarks/bench_reference.py "${REFERENCE[@]}" --out "$OUT/bench_reference.json"
"$PY" benchmarks/gpu_check_summary.py "$OUT"
