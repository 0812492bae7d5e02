#!/usr/bin/env bash
# Long-context LM on public-domain books (configs/books_lm.py) and passkey in a haystack of book
# text (configs/books_passkey.py), at laptop scale: prepares the books and the vocabulary, trains
# every memory x seed, then writes the tables (experiments/books_compare.py,
# experiments/books_passkey.py). A finished run (final_metrics.json) is skipped and an interrupted
# one resumes from its last checkpoint, so this can be stopped and re-run.
#   bash experiments/books.sh [lm|passkey|table|all] [RUNS_DIR]
# STEPS (LM, default 150), SEEDS (default "0 1 2"; one invocation per seed runs them side by
# side), MEMORIES (memory:recipe, default below), PK_STEPS (default 150), PK_MEMORIES,
# PK_LENGTHS (default 4096,32768,131072) and PK_SAMPLES (default 5) for the passkey part.
set -euo pipefail
PHASE=${1:-all}
RUNS=${2:-runs/books}
STEPS=${STEPS:-150}
MEMORIES=${MEMORIES:-infini:best xl:best local:best infini:paper memorizing:best xl:paper local:paper}
PK_STEPS=${PK_STEPS:-150}
PK_MEMORIES=${PK_MEMORIES:-infini xl local}
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

passkey() {  # fine-tunes each memory's LM of the same seed on book-filler passkey prompts
  for seed in ${SEEDS:-0}; do
    for memory in $PK_MEMORIES; do
      lm_dir=$RUNS/lm/${memory}_best/seed$seed
      [ -f "$lm_dir/final_metrics.json" ] || { echo "skip passkey $memory: no $lm_dir"; continue; }
      dir=$RUNS/passkey/${memory}/seed$seed
      train "$dir" "configs/books_passkey.py:memory=$memory,steps=$PK_STEPS" \
          --config.seed="$seed" --config.init_from="$lm_dir/checkpoints"
      [ -f "$dir/sweep.json" ] || "$PY" -m experiments.books_passkey --workdir="$dir" \
          --config="configs/books_passkey.py:memory=$memory,steps=$PK_STEPS" \
          --lengths="${PK_LENGTHS:-4096,32768,131072}" --samples="${PK_SAMPLES:-5}" \
          > "$dir/sweep.log" 2>&1
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
