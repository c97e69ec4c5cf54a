#!/usr/bin/env bash
# Chapter 5: does a hierarchical read of the episodic memory hold a cue as far as the flat read does, and at what cost?
# Task and settings: chapter 4's delay sweep (experiments/ch4_delay.sh), unchanged, so that its stored runs of
# ppo-memory (the flat read over M = 1024 steps), ppo-lstm (forget bias 1) and ppo (no memory) at D = 16, 64 and 256
# are this experiment's baselines: CueRecall-D{D}-v0, 2,000 episodes, rollouts of one whole episode per env (8 envs),
# one minibatch, 4 epochs, the gym preset otherwise; evaluation every 250 episodes, 50 episodes, the most likely action.
# The new agent: ppo-hmemory, the same network with the hierarchical read (companion.attention.HierarchicalMemory):
# M = 1024 steps in chunks of c = 16, the k = 2 chunks with the best mean-key scores read.
# Runs are queued seed by seed, longest delay first. Finished runs are skipped.
# Usage: bash experiments/ch5.sh [JOBS]   (default 2, one torch thread each)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
SEEDS=${SEEDS:-"0 1 2"}
DELAYS=${DELAYS:-"256 64 16"}
EPISODES=2000
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  for seed in $SEEDS; do
    for delay in $DELAYS; do
      length=$((delay + 2))
      line "results/ch5-delay/ppo-hmemory/CueRecall-D$delay-v0/seed$seed" --algo ppo-hmemory --set memory=1024 \
        --set chunk_size=16 --set top_k=2 --env CueRecall-D$delay-v0 --seed "$seed" --steps $((EPISODES * length)) \
        --set n_steps=$length --set batch_size=$((8 * length)) --set n_epochs=4 --set eval_every=$((250 * length)) \
        --set eval_episodes=50
    done
  done
} | OMP_NUM_THREADS=1 xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
