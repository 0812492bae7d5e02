#!/usr/bin/env bash
# Long-context LM on public-domain books (configs/books_lm.py) and passkey in a haystack of book
# text (configs/passkey.py:filler=books), at laptop scale: prepares the books and the
# vocabulary, trains every memory x seed, then writes the tables (experiments/books_compare.py,
# experiments/books_passkey.py). A finished run (final_metrics.json) is skipped and an interrupted
# one resumes from its last checkpoint, so this can be stopped and re-run.
#   bash experiments/books.sh [lm|passkey|table|all] [RUNS_DIR]
# STEPS (LM, default 150), SEEDS (default "0 1 2"; one invocation per seed runs them side by
# side), MEMORIES (memory:recipe, default below); for the passkey part PK_STEPS (the 512-token
# stage, default 1500), PK_STEPS_4K (700), PK_CONTROLS (default "xl local"), PK_LENGTHS
# (default 4096,32768,131072; the training length and 1M are swept too, and each less half a
# segment) and PK_SAMPLES (10).
set -euo pipefail
PHASE=${1:-all}
RUNS=${2:-runs/books}
STEPS=${STEPS:-150}
MEMORIES=${MEMORIES:-infini:best xl:best local:best infini:paper memorizing:best xl:paper local:paper}
PK_STEPS=${PK_STEPS:-1500}
PK_STEPS_4K=${PK_STEPS_4K:-700}
PK_CONTROLS=${PK_CONTROLS-xl local}  # set and empty: no controls
PK_LENGTHS=${PK_LENGTHS:-4096,32768,131072}
PK_SAMPLES=${PK_SAMPLES:-10}
PY=${PYTHON:-.venv/bin/python}

prepare() {
  if [ ! -d data/books ]; then
    ls data/books_src/[Bb]rotli-1.1.0.tar.gz >/dev/null 2>&1 || "$PY" -m pip download --no-deps \
        --no-binary :all: brotli==1.1.0 -d data/books_src
    "$PY" -m infini_jax.data.books --source=data/books_src --out=data/books
  fi
  [ -f data/spm/books_1k.model ] || "$PY" -m infini_jax.data.tokenizer train \
      --dataset=text_files --text_dir=data/books --vocab_size=1024 --out=data/spm/books_1k.model
}

train() {  # DIR CONFIG_ARGS [FLAGS...]
  local dir=$1 config=$2; shift 2
  [ -f "$dir/final_metrics.json" ] && return 0
  mkdir -p "$dir"
  echo "$(date +%T) $dir"
  "$PY" train.py --config="$config" --workdir="$dir" "$@" > "$dir/train.log" 2>&1
}

lm() {
  for seed in ${SEEDS:-0 1 2}; do
    for m in $MEMORIES; do
      IFS=: read -r memory recipe <<< "$m"
      train "$RUNS/lm/${memory}_$recipe/seed$seed" \
          "configs/books_lm.py:memory=$memory,recipe=$recipe,steps=$STEPS" --config.seed="$seed"
    done
  done
}

with_mid() {  # 512,4096 -> 512,4096,448,4032: each length and the same less half a segment (64),
  # so that the answer sits inside its segment as well as opening one (configs/passkey.py: mid)
  local n out=$1
  IFS=, read -ra lengths <<< "$1"
  for n in "${lengths[@]}"; do out+=",$((n - 64))"; done
  echo "$out"
}

sweep() {  # CONFIG DIR LENGTHS SAMPLES OUT: the held-out book's passkey sweep of a run
  [ -f "$2/$5" ] || "$PY" -m experiments.books_passkey --config="$1" --workdir="$2" \
      --lengths="$3" --samples="$4" --out="$5" > "$2/${5%.json}.log" 2>&1
}

passkey() {  # the best passkey recipe (RESULTS.md section 1) with book filler, from scratch
  local pk=configs/passkey.py:filler=books
  for seed in ${SEEDS:-0 1 2}; do
    local seeds="--config.seed=$seed --config.data.passkey_seed=$seed"
    local s1=$RUNS/passkey/infini_512/seed$seed s2=$RUNS/passkey/infini/seed$seed
    train "$s1" "$pk,write_gate=true,train_len=512,steps=$PK_STEPS" $seeds
    sweep "$pk,write_gate=true,train_len=512" "$s1" "$(with_mid "512,$PK_LENGTHS")" \
        "$PK_SAMPLES" sweep.json  # the first stage alone
    train "$s2" "$pk,write_gate=true,jitter=127,train_len=4096,steps=$PK_STEPS_4K" $seeds \
        --config.init_from="$s1/checkpoints" --config.optimizer.lr=1e-3 \
        --config.optimizer.gate_lr_mult=1
    sweep "$pk,write_gate=true,train_len=4096" "$s2" "$(with_mid "512,$PK_LENGTHS")" \
        "$PK_SAMPLES" sweep.json
    sweep "$pk,write_gate=true,train_len=4096" "$s2" "$(with_mid 1048576)" 2 sweep_1m.json
    for memory in $PK_CONTROLS; do  # the same 512-token stage: they see 128 / 256 tokens
      local dir=$RUNS/passkey/$memory/seed$seed
      train "$dir" "$pk,memory=$memory,train_len=512,steps=$PK_STEPS" $seeds
      sweep "$pk,memory=$memory,train_len=512" "$dir" "$(with_mid "512,$PK_LENGTHS")" \
          "$PK_SAMPLES" sweep.json
      sweep "$pk,memory=$memory,train_len=512" "$dir" "$(with_mid 1048576)" 2 sweep_1m.json
    done
  done
}

prepare
case $PHASE in
  lm) lm ;;
  passkey) passkey ;;
  table) ;;
  all) lm; passkey ;;
  *) echo "usage: bash experiments/books.sh [lm|passkey|table|all] [RUNS_DIR]"; exit 1 ;;
esac
"$PY" -m experiments.books_compare "$RUNS"
