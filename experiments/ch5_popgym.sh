#!/usr/bin/env bash
# Chapter 5: a long episode with a memory demand at every step:
#   popgym-RepeatFirstMedium-v0: a card at the first step, a random card at every step after it, 415 steps; at every
#   step the action must name the first card's suit (+-1/415 a step). Its observations do not mark the first step,
#   so every agent gets the previous action (zeros at an episode's first step), which marks it.
# Agents: ppo-hmemory (M = 512, chunks of 16, top 2), ppo-memory (the flat read, M = 512), ppo-lstm; chapter 3's
# popgym settings otherwise (8 envs x 32 steps, 20 epochs, lr 1e-3 annealed), as experiments/ch4_popgym.sh, with
# 200k env steps (482 episodes); evaluation every 20k steps on 10 episodes. 3 seeds.
# Usage: bash experiments/ch5_popgym.sh [JOBS]   (default 2, one torch thread each). Finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
SEEDS=${SEEDS:-"0 1 2"}
ENV=popgym-RepeatFirstMedium-v0
AGENTS=("ppo-hmemory --set memory=512 --set chunk_size=16 --set top_k=2:ppo-hmemory"
        "ppo-memory --set memory=512:ppo-memory" "ppo-lstm:ppo-lstm")
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  for seed in $SEEDS; do
    for agent in "${AGENTS[@]}"; do
      line "results/ch5-popgym/${agent##*:}/$ENV/seed$seed" --algo ${agent%%:*} --set prev_action=true --env $ENV \
        --seed "$seed" --steps 200000 --set eval_every=20000
    done
  done
} | OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
