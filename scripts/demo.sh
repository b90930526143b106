#!/usr/bin/env bash
# The main job, end to end on CPU (`make demo`), and the comparison mode (`make compare`):
#
#   bash scripts/demo.sh              synthetic dataset -> shards (verified) -> untrained score -> NeighborRetr
#                                     training (accelerate launch, 2 CPU processes) -> test scores -> eval report
#                                     -> results table + `RESULT demo_t2v_r1=... untrained_t2v_r1=... chance_r1=...`
#   bash scripts/demo.sh --compare    on the hard synthetic set (demo_out/compare_hard/): NeighborRetr and the
#                                     InfoNCE baseline on COMPARE_SEEDS (3) seeds, each with and without QB-Norm
#                                     and DBNorm (query bank = training captions; tuned on val); overlaid figures
#                                     in compare/<system>/, seed table in compare/seeds/seeds.md
#
# Everything is written under demo_out/ (DEMO_OUT=... to move it; git-ignored). Steps that are already done are
# skipped: the synthetic videos (when annotations.jsonl of the same settings exists) and each split's shards (when
# `shards.verify` passes). Training, scoring and evaluation always run again. Environment knobs:
#   DEMO_OUT (demo_out)  DEMO_PROCS (2: training processes)  DEMO_EPOCHS (20)  DEMO_FORCE=1 (redo synth+shards)
set -euo pipefail
cd "$(dirname "$0")/.."

COMPARE=0
for arg in "$@"; do
  case "$arg" in
    --compare) COMPARE=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $arg (use --compare)" >&2; exit 2 ;;
  esac
done

PY=.venv/bin/python
ACCELERATE=.venv/bin/accelerate
OUT=${DEMO_OUT:-demo_out}
PROCS=${DEMO_PROCS:-2}
EPOCHS=${DEMO_EPOCHS:-20}
# Synthetic data: 600 train / 100 val / 100 test clips of 3 s at 8 fps, 112 px (captions unique within val/test).
SYNTH_ARGS=(--num-train 600 --num-val 100 --num-test 100 --seconds 3 --fps 8 --size 112 --seed 0 --workers 2)
SYNTH_TOTAL=800
# Shards: 12 frames per clip, stored at 64 px (a 64 px tiny ViT with 16 px patches trains ~3x faster than at
# 112 px on CPU; the shapes stay easy to see).
FRAME_SIZE=64
# Comparison mode (`make compare`) runs on the hard synthetic set instead (preprocess.synth --mode hard: long-tailed
# attribute combinations, near-duplicate clips, a generic and a specific caption per clip) with a 1,000-video test
# split (100 test queries give a +-10-point R@1 interval; 2,000 caption queries about +-2), in its own folder, and
# trains both systems on COMPARE_SEEDS seeds. Knobs: COMPARE_SEEDS (3) COMPARE_TRAIN (600) COMPARE_VAL (200)
# COMPARE_TEST (1000); the test suite runs a tiny version (tests/test_demo_scripts.py).
SEEDS=${COMPARE_SEEDS:-3}
if [ $COMPARE = 1 ]; then
  OUT=$OUT/compare_hard
  SYNTH_ARGS=(--mode hard --num-train "${COMPARE_TRAIN:-600}" --num-val "${COMPARE_VAL:-200}"
              --num-test "${COMPARE_TEST:-1000}" --seconds 3 --fps 8 --size 64 --seed 0 --workers 2)
  SYNTH_TOTAL=$(( ${COMPARE_TRAIN:-600} + ${COMPARE_VAL:-200} + ${COMPARE_TEST:-1000} ))
fi
PREPROCESS_ARGS=(--config configs/preprocess/synth.yaml "anno_path=$OUT/synth/annotations.jsonl"
                 "video_root=$OUT/synth" "out=$OUT/shards" "frame_size=$FRAME_SIZE" progress=false)
# Training: configs/demo.yaml (tiny random-init CLIP "nr-tiny", global batch 32, k = 20 neighbours, lr 2e-3,
# 20 epochs, 64 px frames, loss.global_l2norm=true). Why l2norm (docs/method.md §8-Q7): with the official unnormalised
# global similarity, L_Opt is 16.6 at init with a gradient norm of 670 (L_Wti: 17); clipped to norm 1, the first
# updates are almost all L_Opt and the representations collapse (lr 1e-3, 6 epochs: val R@1 2%, test scores
# -0.117 +- 0.003). At this demo's budget the official setting reaches val mean R@1 23% / test t2v R@1 19%,
# vs 39.5% / 36% with l2norm.
TRAIN_ARGS=(data.root="$OUT/shards" data.frame_size="$FRAME_SIZE" optim.epochs="$EPOCHS" run.log_every_steps=10)
# One torch thread per process: on 2 cores, 2 threads per process + loader workers oversubscribe the CPU and a
# step takes ~10x longer (measured).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 ACCELERATE_USE_CPU=1

# ---------------------------------------------------------------------------------------------------------------
STEP=0
NSTEPS=$((COMPARE ? 11 : 7))
T_ALL=$(date +%s)
TIMES=()
T_STEP=$T_ALL
NAME=""
WATCHER=""
trap '[ -n "$WATCHER" ] && kill "$WATCHER" 2>/dev/null; true' EXIT
begin() {  # begin "name": print a header, start the step clock
  STEP=$((STEP + 1)); NAME=$1; T_STEP=$(date +%s)
  echo; echo "==> [$STEP/$NSTEPS] $NAME  ($(date -u +%H:%M:%S) UTC)"
}
end() {  # end ["note"]: print and record the step's wall time
  local dt=$(( $(date +%s) - T_STEP ))
  TIMES+=("$(printf '%-62s %5d s  %s' "[$STEP] $NAME" "$dt" "${1:-}")")
  echo "<== [$STEP/$NSTEPS] $NAME: ${dt} s ${1:-}"
}
verify_split() {  # verify_split SPLIT [quiet]: 0 when the split's shards verify
  if [ "${2:-}" = quiet ]; then
    $PY -m shards.verify "$OUT/shards/$1" >/dev/null 2>&1
  else
    $PY -m shards.verify "$OUT/shards/$1"
  fi
}
train() {  # train RUN_DIR [overrides...]: NeighborRetr / baseline training through accelerate launch
  local run=$1; shift
  rm -rf "$run"
  local port
  port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local launch=("$ACCELERATE" launch --num_machines 1 --mixed_precision no --dynamo_backend no
                --main_process_port "$port")
  if [ "$PROCS" -gt 1 ]; then
    launch+=(--multi_gpu --num_processes "$PROCS")
  else
    launch+=(--num_processes 1)
  fi
  "${launch[@]}" -m training.train --config configs/demo.yaml "${TRAIN_ARGS[@]}" data.num_workers=1 \
    run.out="$run" "$@"
}

mkdir -p "$OUT"
echo "NeighborRetr demo$([ $COMPARE = 1 ] && echo ' (comparison mode)') -> $OUT/  (python: $($PY -c 'import sys; print(sys.version.split()[0])'), $(getconf _NPROCESSORS_ONLN) cores, $PROCS training processes, $EPOCHS epochs)"

# 1. synthetic videos -------------------------------------------------------------------------------------------
begin "synthetic dataset (preprocess.synth)"
stamp="$OUT/synth/.settings"
if [ "${DEMO_FORCE:-0}" != 1 ] && [ -f "$OUT/synth/annotations.jsonl" ] && [ -f "$stamp" ] \
   && [ "$(cat "$stamp")" = "${SYNTH_ARGS[*]}" ]; then
  end "(skipped: $OUT/synth/annotations.jsonl exists, same settings)"
else
  rm -rf "$OUT/synth" "$OUT/shards"
  # preprocess.synth reports only at the end: show how many clips are written every 10 s meanwhile
  ( while sleep 10; do
      n=$(find "$OUT/synth/videos" -name 'synth*.mp4' ! -name '*.part.mp4' 2>/dev/null | wc -l)
      echo "  synth: $n / $SYNTH_TOTAL clips written"
    done ) &
  WATCHER=$!
  $PY -m preprocess.synth --out "$OUT/synth" "${SYNTH_ARGS[@]}"
  kill "$WATCHER" 2>/dev/null || true
  WATCHER=""
  echo "${SYNTH_ARGS[*]}" > "$stamp"
  end
fi

# 2. shards -----------------------------------------------------------------------------------------------------
begin "shards: preprocess + shards.verify (train, val, test)"
note=""
for split in train val test; do
  if [ "${DEMO_FORCE:-0}" != 1 ] && verify_split "$split" quiet; then
    echo "$split: shards present and verified, skipped"
    note="$note $split:skipped"
    continue
  fi
  $PY -m preprocess "${PREPROCESS_ARGS[@]}" "split=$split"
  verify_split "$split"
  note="$note $split:written"
done
end "($note )"

# 3. untrained reference ----------------------------------------------------------------------------------------
begin "untrained model: init weights (same seed as training) + test scores"
mkdir -p "$OUT/scores"
$PY scripts/init_checkpoint.py --config configs/demo.yaml --out "$OUT/untrained" "${TRAIN_ARGS[@]}"
$PY -m training.score --checkpoint "$OUT/untrained" --split test --out "$OUT/scores/untrained_test.npz" --metrics
end

# 4. training ---------------------------------------------------------------------------------------------------
begin "train NeighborRetr (accelerate launch, $PROCS processes, CPU)"
train "$OUT/runs/neighborretr"
end "(selected: $(cat "$OUT/runs/neighborretr/best/selection.json" 2>/dev/null | tr -d '\n ' || echo none))"

# 5. test scores with the selected checkpoint -------------------------------------------------------------------
begin "score the test split (best checkpoint, selected on val)"
$PY -m training.score --run "$OUT/runs/neighborretr" --split test --out "$OUT/scores/neighborretr_test.npz"
end

if [ $COMPARE = 1 ]; then
  # 6. baseline and the other seeds ---------------------------------------------------------------------------
  begin "train the InfoNCE baseline and both systems on seeds 1..$((SEEDS - 1)) (same shards, same model)"
  train "$OUT/runs/infonce" loss.kind=infonce bank.enabled=false run.seed=0
  for seed in $(seq 1 $((SEEDS - 1))); do
    train "$OUT/runs/neighborretr_s$seed" run.seed="$seed"
    train "$OUT/runs/infonce_s$seed" loss.kind=infonce bank.enabled=false run.seed="$seed"
  done
  end "(seed 0 selected: $(cat "$OUT/runs/infonce/best/selection.json" 2>/dev/null | tr -d '\n ' || echo none))"

  # 7. scores for the comparison --------------------------------------------------------------------------------
  begin "scores for the comparison: val/test + query banks (train captions x val/test videos), every seed"
  # Each model is scored with its own test-time similarity (eval.similarity=auto): NeighborRetr's local WTI score,
  # the InfoNCE baseline's pooled cosine (EOT text token vs mean frame token) that it was trained with.
  $PY -m training.score --run "$OUT/runs/infonce" --split test --out "$OUT/scores/infonce_test.npz"
  for seed in $(seq 0 $((SEEDS - 1))); do
    sfx=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
    for sys in neighborretr infonce; do
      ck="$OUT/runs/$sys$sfx/best"
      [ "$seed" = 0 ] || $PY -m training.score --checkpoint "$ck" --split test --out "$OUT/scores/${sys}${sfx}_test.npz"
      $PY -m training.score --checkpoint "$ck" --split val --out "$OUT/scores/${sys}${sfx}_val.npz"
      for split in test val; do
        $PY -m training.score --checkpoint "$ck" --split "$split" --queries train \
          --out "$OUT/scores/${sys}${sfx}_bank_${split}.npz"
      done
    done
  done
  end

  # 8. eval of each system with QB-Norm and DBNorm (seed 0: overlaid figures) ------------------------------------
  begin "eval: each system with and without QB-Norm / DBNorm (tuned on val), every seed"
  for seed in $(seq 0 $((SEEDS - 1))); do
    sfx=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
    dir=$([ "$seed" = 0 ] && echo "$OUT/compare" || echo "$OUT/compare/seeds/s$seed")
    for pair in neighborretr:infonce infonce:neighborretr; do
      a=${pair%%:*}; b=${pair##*:}
      $PY -m eval "$OUT/scores/${a}${sfx}_test.npz" --compare "$OUT/scores/${b}${sfx}_test.npz" --names "$a" "$b" \
        --posthoc qbnorm,dbnorm --val-scores "$OUT/scores/${a}${sfx}_val.npz" \
        --bank-scores "$OUT/scores/${a}${sfx}_bank_test.npz" --val-bank-scores "$OUT/scores/${a}${sfx}_bank_val.npz" \
        $([ "$seed" = 0 ] || echo --no-plots) --out "$dir/$a" > "$OUT/compare_${a}${sfx}.log"
      echo "eval $a seed $seed: $dir/$a/report.md"
    done
  done
  end

  # 9. seeds: mean +- sd and paired tests -----------------------------------------------------------------------
  begin "seeds: R@1 mean +- sd over $SEEDS seeds, paired tests vs InfoNCE, minimum detectable difference"
  files() {  # files SYSTEM [POSTHOC]: comma list of per-seed scores files (or eval ranks for a post-hoc method)
    local sys=$1 m=${2:-} list="" seed sfx dir
    for seed in $(seq 0 $((SEEDS - 1))); do
      sfx=$([ "$seed" = 0 ] && echo "" || echo "_s$seed")
      dir=$([ "$seed" = 0 ] && echo "$OUT/compare" || echo "$OUT/compare/seeds/s$seed")
      if [ -z "$m" ]; then list="$list,$OUT/scores/${sys}${sfx}_test.npz"; else list="$list,$dir/$sys/ranks.npz#posthoc_$m"; fi
    done
    echo "${list#,}"
  }
  $PY -m eval.seeds --system infonce "$(files infonce)" --system neighborretr "$(files neighborretr)" \
    --system infonce+qbnorm "$(files infonce qbnorm)" --system neighborretr+qbnorm "$(files neighborretr qbnorm)" \
    --system infonce+dbnorm "$(files infonce dbnorm)" --system neighborretr+dbnorm "$(files neighborretr dbnorm)" \
    --baseline infonce --out "$OUT/compare/seeds"
  end
fi

# evaluation + report -------------------------------------------------------------------------------------------
begin "eval: metrics.json, report.md and plots"
$PY -m eval "$OUT/scores/neighborretr_test.npz" --compare "$OUT/scores/untrained_test.npz" \
  --names neighborretr untrained --out "$OUT/report"
end

begin "summary"
summary=(--report "$OUT/report" --untrained-scores "$OUT/scores/untrained_test.npz")
[ $COMPARE = 1 ] && summary+=(--compare "$OUT/compare")
echo
echo "wall time per step:"
printf '  %s\n' "${TIMES[@]}"
printf '  %-62s %5d s\n' "total" "$(( $(date +%s) - T_ALL ))"
$PY scripts/demo_summary.py "${summary[@]}"

# search: index the test split, top 3 of two example queries (docs/search.md) -------------------------------------
echo; echo "==> search: index the test split with the trained checkpoint; top 3 of two example queries"
$PY -m search index --run "$OUT/runs/neighborretr" --split test --out "$OUT/index" --overwrite  # derived from this run: re-encode parts of an earlier run
$PY -m search search --index "$OUT/index" --k 3 --query "a red circle moves left on a black background"
$PY -m search search --index "$OUT/index" --k 3 --query "a yellow square moves up on a white background"
