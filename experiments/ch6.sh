#!/usr/bin/env bash
# Chapter 6's experiments: DQN (4-frame stacks), DRQN, DARQN-soft and DARQN-hard on MinAtar, at equal frames.
# Usage: bash experiments/ch6.sh [JOBS] [STEPS]   (JOBS in parallel, default 2, one torch thread each)
# Every run is a plain `python -m companion train` command; its run directory records it in meta.json.
#
# Tasks: Seaquest, Breakout, and Breakout with flickering frames (each frame blanked with probability 0.5).
# Shared settings, so that only the network differs: Adam 2.5e-4, batch 32, replay 100k, learning from step
# 5k, an update every 4 steps (as in the DARQN paper), target copy every 1k, Double DQN, Huber loss,
# epsilon 1 -> 0.1 over the first 20% of the run, evaluation every 5k steps (10 episodes, epsilon 0.05).
# The recurrent agents train on 8-step windows (the MinAtar presets: LSTM 128, DARQN attention 128).
# Measured on a 2-core CPU, two runs at a time: DARQN 7.5-11 min per run, DRQN ~3, DQN under 1; 107 min in all.
# History: the first DARQN-hard runs let the TD loss reach the attention through the soft-mixed examples and
# the baseline's fit reach the whole network, unlike the original code; they were withdrawn and made again
# at commit ce3f26c (hard_gradients=original, the default; the query h_{t-1} detached as well).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
STEPS=${2:-50000}
COMMON="--steps $STEPS --set train_freq=4 --set eps_fraction=0.2 --set eval_epsilon=0.05 --set eval_every=5000"
COMMON="$COMMON --set eval_episodes=10 --set target_update=1000 --set lr=0.00025 --set batch_size=32"
TASKS=("--env MinAtar/Seaquest-v1:Seaquest" "--env MinAtar/Breakout-v1:Breakout"
       "--env MinAtar/Breakout-v1 --flicker 0.5:Breakout-flicker0.5")
AGENTS=("darqn --set attention=soft:darqn-soft" "darqn --set attention=hard:darqn-hard"
        "drqn:drqn" "dqn --set frame_stack=4:dqn-stack4")
{
  # Longest runs first, so that the two workers finish together.
  for agent in "${AGENTS[@]}"; do
    for task in "${TASKS[@]}"; do
      for seed in 0 1 2; do
        out="results/ch6-minatar/${agent##*:}/${task##*:}/seed$seed"
        [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && continue  # done already
        echo "train --algo ${agent%%:*} ${task%%:*} --seed $seed $COMMON --out $out"
      done
    done
  done
} | xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
