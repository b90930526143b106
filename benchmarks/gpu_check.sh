#!/usr/bin/env bash
# GPU checks of issues 5 and 3 in ONE command: synthetic shards made here, then
#   (1) issue 5: the real trainer (python -m training.train, one process) with ViT-B/32 random init, bf16, global
#       batch 128, 12 frames, 24 words, memory bank 1,920 (configs/gpu_check.yaml) streaming the shards from local
#       disk: samples/s, peak GPU memory and data-wait fraction over 50 steps (after 10 warm-up steps), by
#       benchmarks/gpu_check_summary.py (its docstring says what each number includes: the per-step times leave
#       out the bank pre-fill at each epoch start and the epoch-end checkpoint; the wall-clock rate includes them);
#   (2) issue 3: benchmarks/loader_throughput.py --jpeg-device cuda: clips/s with the JPEGs decoded on the GPU
#       (batched nvJPEG) next to the CPU loader's, same shards, same worker counts.
#
# Usage, on the GPU machine from the repository root (the wheels in .whl/ supply what its Python lacks):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh
# The wheels (for a GPU machine without network; Python 3.12 there): on a machine with PyPI access, from the root,
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       --platform manylinux2010_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
#       webdataset==1.0.2 braceexpand==0.1.7 simplejpeg==1.9.0 ffmpeg-python==0.2.0 future==1.0.0 \
#       imageio-ffmpeg==0.6.0 decord==0.6.0
#   (the set used on 2026-11-27; everything else, torch included, was on the machine already)
# Toy scale on a CPU machine (same pipeline: nr-tiny model, 64 px, 96 clips, bf16 on the CPU; the loader benchmark
# without the GPU option, plus a check that --jpeg-device cuda refuses to run without CUDA):
#   PY=.venv/bin/python OUT=/tmp/gpu_check_out bash benchmarks/gpu_check.sh --tiny
#
# Environment (all optional):
#   OUT        results folder (default /tmp/nr_gpu_check_out): gpu_check.log (everything), metrics.jsonl and
#              train.log of the training run, summary.txt, loader.log
#   WORK       scratch folder for clips, shards and the run (default /tmp/nr_gpu_check; emptied first)
#   PY         python interpreter (default python3)
#   NR_CLIPS   training clips to synthesise (default 3840 = 30 steps per epoch at batch 128; >= 1920 fills the bank)
#   NR_WORKERS loader workers per process (default 12; lowered automatically when /dev/shm is too small)
#   NR_BUDGET_S  wall-clock budget of the whole script in seconds (default 450); every phase runs under
#              `timeout` with min(its own cap, what is left of the budget), so a hang cannot eat the machine time
#   NR_SKIP_LOADER=1  skip the loader benchmark (2)
#
# Prints a timestamp per phase and ends with the RESULT lines:
#   RESULT gpu_samples_per_s=... gpu_peak_mem_gb=... gpu_data_wait_frac=... (training, 50 measured steps)
#   RESULT clips_per_s=... gpu_decode_w1=... gpu_decode_w8=... (loader benchmark)
set -u
set -o pipefail

TINY=0
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (use --tiny or nothing)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PY=${PY:-python3}
OUT=${OUT:-/tmp/nr_gpu_check_out}
WORK=${WORK:-/tmp/nr_gpu_check}
BUDGET=${NR_BUDGET_S:-450}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PYTHONPATH=${PYTHONPATH:-$REPO}
mkdir -p "$OUT" || exit 2
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
LOG=$OUT/gpu_check.log
: > "$LOG"
T0=$(date +%s)
NPROC=$(nproc)

say() { echo "[gpu_check $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# run_phase NAME CAP_SECONDS CMD...: run under timeout min(CAP, budget left), output appended to the log (and
# written to $PHASE_OUT when set)
run_phase() {
  local name=$1 cap=$2; shift 2
  local lim; lim=$(left)
  (( lim > cap )) && lim=$cap
  if (( lim < 5 )); then say "phase $name SKIPPED: budget spent"; return 124; fi
  say "phase $name start (timeout ${lim}s): $*"
  local t=$(date +%s)
  timeout --kill-after=10 "$lim" "$@" 2>&1 | tee -a "$LOG" ${PHASE_OUT:+"$PHASE_OUT"}
  local rc=$?
  say "phase $name end rc=$rc after $(( $(date +%s) - t ))s$( ((rc == 124)) && echo ' (TIMED OUT)')"
  return $rc
}

if (( TINY )); then
  CLIPS=${NR_CLIPS:-96}; WORKERS=${NR_WORKERS:-2}; SIZE=64; BATCH=16; SKIP=2; STEPS=6
  TRAIN_ARGS=(model.arch=nr-tiny data.frame_size=64 data.batch_size=16 data.eval_batch_size=16
              loss.num_neighbors=8 bank.prefill_batches=2 optim.max_steps=8 run.mixed_precision=bf16)
  LOADER_ARGS=(--no-video-baselines --clips 2 --repeat 8 --shards 4 --batch-size 4 --rounds 1 --raw-iters 10)
  CAPS=(synth=60 pre=60 train=240 loader=120)
else
  CLIPS=${NR_CLIPS:-3840}; WORKERS=${NR_WORKERS:-12}; SIZE=224; BATCH=128; SKIP=10; STEPS=50
  TRAIN_ARGS=()
  LOADER_ARGS=(--jpeg-device cuda --workers 1,8 --no-video-baselines --clips 4 --repeat 256 --shards 16
               --batch-size 16 --rounds 3 --raw-iters 100)
  CAPS=(synth=90 pre=90 train=240 loader=180)
fi
cap() { local kv; for kv in "${CAPS[@]}"; do [[ ${kv%%=*} == "$1" ]] && echo "${kv#*=}"; done; }

# -- phase 0: environment ------------------------------------------------------------------------------------
say "repo $REPO, out $OUT, work $WORK, python $PY, tiny=$TINY, clips $CLIPS, budget ${BUDGET}s, $NPROC cores"
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h /dev/shm "$WORK" | sed 's/^/  /'; free -g | sed 's/^/  /'; } 2>&1 | tee -a "$LOG"
run_phase env 60 "$PY" - "$TINY" <<'EOF'
import importlib, sys, torch
tiny = sys.argv[1] == "1"
print(f"python {sys.version.split()[0]} torch {torch.__version__} cuda {torch.cuda.is_available()}"
      + (f" {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
missing = []
for name in ("torchvision", "accelerate", "open_clip", "webdataset", "simplejpeg", "ffmpeg", "imageio_ffmpeg",
             "ftfy", "yaml", "tqdm", "decord", "s3fs"):
    try:
        m = importlib.import_module(name)
        print(f"  {name:<15} {getattr(m, '__version__', '?'):<12} {getattr(m, '__file__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {name:<15} MISSING ({type(e).__name__}: {e})")
        if name not in ("decord", "s3fs"):  # decord: preprocess --decoder ffmpeg instead; s3fs: s3:// only
            missing.append(name)
import shards.reader, training.train, preprocess.job  # noqa: E401,F401 - our packages import without s3fs/decord
from preprocess.decode import ffmpeg_binary
print("  ffmpeg binary:", ffmpeg_binary())
if missing:
    sys.exit(f"missing packages: {missing}")
if not tiny and not torch.cuda.is_available():
    sys.exit("no CUDA device: run with --tiny on a CPU machine")
EOF
(( $? == 0 )) || { say "FAILED: environment check"; exit 3; }
DECODER=ffmpeg
"$PY" -c "import decord" 2>/dev/null && DECODER=decord

# /dev/shm: the reader keeps (prefetch 2 + 2) uint8 batches per worker in shared memory (B*T*S*S*3 bytes each),
# for the loader's lifetime; the training loader's set stays while each epoch's bank pre-fill loader makes its own
SHM_NEED_MB=$(( 2 * WORKERS * 4 * BATCH * 12 * SIZE * SIZE * 3 / 1048576 * 5 / 4 ))
SHM_AVAIL_MB=$(df -m --output=avail /dev/shm 2>/dev/null | tail -1 | tr -d ' ')
if [[ -n "$SHM_AVAIL_MB" ]] && (( SHM_AVAIL_MB < SHM_NEED_MB )); then
  say "/dev/shm has ${SHM_AVAIL_MB} MB free, the loader needs ~${SHM_NEED_MB} MB: trying to enlarge it"
  mount -o remount,size=$(( SHM_NEED_MB * 2 ))m /dev/shm 2>&1 | tee -a "$LOG"
  SHM_AVAIL_MB=$(df -m --output=avail /dev/shm | tail -1 | tr -d ' ')
  PER=$(( SHM_NEED_MB / WORKERS + 1 ))
  if (( SHM_AVAIL_MB < SHM_NEED_MB )); then
    WORKERS=$(( SHM_AVAIL_MB / PER )); (( WORKERS < 1 )) && WORKERS=1
    say "/dev/shm still ${SHM_AVAIL_MB} MB: loader workers lowered to $WORKERS"
  fi
fi
say "loader workers $WORKERS, preprocess decoder $DECODER"

# -- phase 1: synthetic clips, phase 2: shards -----------------------------------------------------------------
SHARDS_OK=0
run_phase synth "$(cap synth)" "$PY" -m preprocess.synth --out "$WORK/synth" --num-train "$CLIPS" --num-val 0 \
  --num-test 0 --size "$SIZE" --workers "$NPROC" \
  && run_phase preprocess "$(cap pre)" "$PY" -m preprocess --config configs/preprocess/synth.yaml --split train \
    --anno_path "$WORK/synth/annotations.jsonl" --video_root "$WORK/synth" --out "$WORK/shards" \
    --frame_size "$SIZE" --num_workers "$NPROC" --decoder "$DECODER" --shard_size 64 --progress false \
  && SHARDS_OK=1
du -sh "$WORK/shards/train" 2>&1 | tee -a "$LOG"
rm -rf "$WORK/synth/videos"

# -- phase 3: training (issue 5) -----------------------------------------------------------------------------
TRAIN_RC=1
if (( SHARDS_OK )); then
  run_phase train "$(cap train)" "$PY" -m training.train --config configs/gpu_check.yaml \
    data.root="$WORK/shards" run.out="$WORK/run" data.num_workers="$WORKERS" "${TRAIN_ARGS[@]}"
  TRAIN_RC=$?
else
  say "FAILED: synth or preprocess; training skipped (the loader benchmark makes its own shards)"
fi
cp "$WORK/run/metrics.jsonl" "$OUT/metrics.jsonl" 2>/dev/null
cp "$WORK/run/train.log" "$OUT/train.log" 2>/dev/null
rm -rf "$WORK/run/checkpoints" "$WORK/run/best"
"$PY" benchmarks/gpu_check_summary.py "$OUT/metrics.jsonl" --skip "$SKIP" --steps "$STEPS" 2>&1 \
  | tee "$OUT/summary.txt" | tee -a "$LOG"
grep -h "memory bank pre-filled\|training finished\|training PREEMPTED" "$WORK/run/train.log" 2>/dev/null | cut -c1-200 | tee -a "$LOG"

# -- phase 4: loader benchmark with GPU JPEG decoding (issue 3) ----------------------------------------------
LOADER_RC=0
if [[ "${NR_SKIP_LOADER:-0}" != 1 ]]; then
  if (( TINY )); then  # the GPU option must refuse clearly without CUDA
    "$PY" benchmarks/loader_throughput.py --jpeg-device cuda --clips 1 > "$WORK/nocuda.txt" 2>&1
    rc=$?
    say "loader --jpeg-device cuda without CUDA: rc=$rc: $(tail -1 "$WORK/nocuda.txt")"
    (( rc == 2 )) || LOADER_RC=1
  fi
  PHASE_OUT=$OUT/loader.log run_phase loader "$(cap loader)" "$PY" benchmarks/loader_throughput.py "${LOADER_ARGS[@]}"
  (( $? == 0 )) || LOADER_RC=1
fi

rm -rf "$WORK/shards"
say "done: train rc=$TRAIN_RC, loader rc=$LOADER_RC; total $(( $(date +%s) - T0 ))s"
grep -h "^RESULT" "$OUT/summary.txt" "$OUT/loader.log" 2>/dev/null | tee -a "$LOG"
(( TRAIN_RC == 0 && LOADER_RC == 0 ))
