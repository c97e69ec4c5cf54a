#!/usr/bin/env bash
# Chapter 2's experiments: the runs whose records the notebook plots from results/.
# Usage: bash experiments/ch2.sh [JOBS]   (JOBS runs in parallel, default 2; each uses one torch thread)
# Every run is a plain `python -m companion train` command; its run directory records it in meta.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
{
  # DQN on CartPole-v1, RL Zoo settings, the book budget (50k steps), 5 seeds.
  for seed in 0 1 2 3 4; do
    echo "train --algo dqn --env CartPole-v1 --seed $seed --budget book --out results/ch2-cartpole/dqn/CartPole-v1/seed$seed"
  done
  # Partial observability, 100k steps, 3 seeds: velocities hidden, and flickering observations.
  for seed in 0 1 2; do
    for variant in "--hide 1,3:CartPole-v1-hide1_3" "--flicker 0.5:CartPole-v1-flicker0.5"; do
      env_args=${variant%%:*}; name=${variant##*:}
      echo "train --algo dqn --env CartPole-v1 $env_args --seed $seed --steps 100000 --out results/ch2-pomdp/dqn/$name/seed$seed"
      echo "train --algo dqn --env CartPole-v1 $env_args --seed $seed --steps 100000 --set frame_stack=4 --out results/ch2-pomdp/dqn-stack4/$name/seed$seed"
      echo "train --algo drqn --env CartPole-v1 $env_args --seed $seed --steps 100000 --out results/ch2-pomdp/drqn/$name/seed$seed"
    done
  done
} | xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
