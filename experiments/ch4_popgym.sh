#!/usr/bin/env bash
# Chapter 4: the episodic memory on two POPGym memory tasks (Morad et al. 2023), beside an LSTM and no memory.
#   popgym-RepeatFirstEasy-v0: a card at step 0, then a random card each step; the action must name the first
#     card's suit at every step (51 steps, reward +-1/51 a step). Its observation does not mark the first step,
#     so every agent gets the previous action (one-hot, zeros at the first step): that marks it.
#   popgym-CountRecallEasy-v0: cards are dealt; the action must give how often the current card has come so far.
# Agents and settings: chapter 3's PPO family at its popgym preset (RL-Zoo's CartPole settings: 8 envs x 32
# steps, 20 epochs, lr 1e-3 annealed), 100k env steps, as chapter 3's popgym runs; ppo-memory with M = 64 slots
# (more than an episode), prev_action for all. Evaluation every 5k steps, 10 episodes (the preset).
# Usage: bash experiments/ch4_popgym.sh [JOBS]   (default 2, one torch thread each). Finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
SEEDS=${SEEDS:-"0 1 2"}
AGENTS=("ppo-memory --set memory=64:ppo-memory" "ppo-lstm:ppo-lstm" "ppo:ppo")
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  for seed in $SEEDS; do
    for env in popgym-RepeatFirstEasy-v0 popgym-CountRecallEasy-v0; do
      for agent in "${AGENTS[@]}"; do
        line "results/ch4-popgym/${agent##*:}/$env/seed$seed" --algo ${agent%%:*} --set prev_action=true \
          --env $env --seed "$seed" --steps 100000
      done
    done
  done
} | OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
