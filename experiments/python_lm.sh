#!/usr/bin/env bash
# Table 2 at laptop scale (configs/python_lm.py): every memory x 3 seeds, then the comparison.
# A finished run (final_metrics.json) is skipped and an interrupted one resumes from its last
# checkpoint, so this can be stopped and re-run.
#   bash experiments/python_lm.sh [RUNS_DIR [STEPS [MEMORIES]]]
# SEEDS="0 1 2" by default; one invocation per seed runs them in parallel (pin each to its cores).
# defaults: runs/python_lm, 1,500 steps, Infini (linear, as published and with the options of
# docs/RESULTS.md section 2), local and XL, then XL and the best Infini with token shift, its
# weights started at 1 and at 0, then the paper's other baselines and Infini's delta rule,
# Memorizing Transformers with the shift, the XL/Infini pair on 32- and 16-token segments, and
# local and Memorizing on 16-token segments (about 1,200 CPU-minutes, a seventh of them full
# attention's);
# every memory at 300 steps, for example:
#   bash experiments/python_lm.sh runs/python_lm_all 300 "infini:linear infini:delta local xl memorizing rmt full"
set -euo pipefail
RUNS=${1:-runs/python_lm}
STEPS=${2:-1500}
MEMORIES=${3:-infini:linear local xl infini:linear:write_gate infini:linear:decay infini:linear:xl_cache
  infini:linear:decay+xl_cache infini:linear:gate_init=-3 infini:linear:decay+gate_init=-3
  infini:linear:decay+xl_cache+gate_init=-3 infini:linear:query_gate
  infini:linear:decay+xl_cache+gate_init=-3+query_gate infini:linear:decay+gate_init=-3+memory_add
  infini:linear:decay+xl_cache+gate_init=-3+memory_add xl::token_shift=8
  infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale
  xl::token_shift=8+shift_init=0
  infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale+shift_init=0
  infini:delta memorizing rmt full memorizing::token_shift=8+shift_init=0
  xl::token_shift=8+shift_init=0+segment=32
  infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale+shift_init=0+segment=32
  xl::token_shift=8+shift_init=0+segment=16
  infini:linear:decay+xl_cache+gate_init=-3+memory_add+token_shift=8+memory_scale+shift_init=0+segment=16
  local::token_shift=8+shift_init=0+segment=16 memorizing::token_shift=8+shift_init=0+segment=16}
PY=${PYTHON:-.venv/bin/python}
for seed in ${SEEDS:-0 1 2}; do
  for m in $MEMORIES; do
    # MEMORY, or infini:RULE, or infini:RULE:OPTIONS with OPTIONS config arguments of
    # configs/python_lm.py joined by +: a flag (write_gate, decay, xl_cache) or name=value
    # (gate_init=-3). infini:linear:decay+xl_cache runs as infini_linear_decay_xl_cache, and
    # xl::token_shift=8 (the rule is Infini's alone) as xl_token_shift_8.
    IFS=: read -r memory rule option <<< "$m"; rule=${rule:-linear}
    args="memory=$memory,rule=$rule,steps=$STEPS${option:+,${option//+/,}}"
    name=$memory; [ "$memory" = infini ] && name=infini_$rule
    name=$name${option:+_${option//[+=]/_}}
    dir=$RUNS/$name/seed$seed
    [ -f "$dir/final_metrics.json" ] && continue
    mkdir -p "$dir"
    echo "$(date +%T) $name seed $seed"
    "$PY" train.py --config="configs/python_lm.py:$args" \
        --config.seed="$seed" --workdir="$dir" > "$dir/train.log" 2>&1
  done
done
"$PY" -m experiments.compare "$RUNS"
