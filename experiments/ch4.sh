#!/usr/bin/env bash
# Chapter 4's replay and value-memory experiments (the delay sweep is experiments/ch4_delay.sh):
#   - DQN + prioritized replay (--set prioritized=true: Schaul et al. 2016's proportional variant, alpha 0.6,
#     beta 0.4 -> 1) against uniform replay at otherwise equal settings, both run here at one commit: CartPole-v1
#     with RL-Zoo's settings (chapter 2's, 50k steps, 5 seeds) and MinAtar Breakout with experiments/ch6.sh's
#     shared settings and 4-frame stacks (50k steps, 3 seeds). The uniform runs repeat chapter 2's and 6's
#     stored ones (results/ch2-cartpole/dqn, results/ch6-minatar/dqn-stack4/Breakout) at this commit.
#   - NEC (Pritzel et al. 2017) on CartPole-v1 for 50k steps, 5 seeds, beside the same stored DQN runs: NEC's
#     claim is early sample efficiency, so the comparison is at equal env steps early on.
# Usage: bash experiments/ch4.sh [JOBS]   (JOBS in parallel, default 2, one torch thread each; PART=nec or PART=per
# runs one part only)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
MINATAR="--steps 50000 --set train_freq=4 --set eps_fraction=0.2 --set eval_epsilon=0.05 --set eval_every=5000"
MINATAR="$MINATAR --set eval_episodes=10 --set target_update=1000 --set lr=0.00025 --set batch_size=32"
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  if [ "${PART:-all}" != per ]; then  # NEC
    for seed in 0 1 2 3 4; do
      line "results/ch4-nec/nec/CartPole-v1/seed$seed" --algo nec --env CartPole-v1 --seed $seed --budget book \
        --steps 50000
    done
  fi
  if [ "${PART:-all}" != nec ]; then  # prioritized replay
    for seed in 0 1 2 3 4; do
      for variant in "dqn:" "dqn-per:--set prioritized=true"; do
        line "results/ch4-per/${variant%%:*}/CartPole-v1/seed$seed" --algo dqn --env CartPole-v1 --seed $seed \
          --budget book --steps 50000 ${variant#*:}
      done
    done
    for seed in 0 1 2; do
      for variant in "dqn-stack4:" "dqn-stack4-per:--set prioritized=true"; do
        line "results/ch4-per/${variant%%:*}/Breakout/seed$seed" --algo dqn --set frame_stack=4 \
          --env MinAtar/Breakout-v1 --seed $seed $MINATAR ${variant#*:}
      done
    done
  fi
} | xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
