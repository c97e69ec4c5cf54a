#!/usr/bin/env bash
# Chapter 3's experiments: actor-critic agents whose torso (what the actor and the critic read) differs and
# nothing else, on three partially observable tasks, plus PPO on CartPole-v1 as the positive control.
# Usage: bash experiments/ch3.sh [JOBS]   (JOBS in parallel, default 2, one torch thread each)
# Every run is a plain `python -m companion train` command; its run directory records it in meta.json.
#
# Settings: RL Baselines3 Zoo's for PPO on CartPole-v1 (hyperparams/ppo.yml), which its ppo_lstm.yml uses for
# CartPoleNoVel too: 8 envs x 32 steps, one minibatch of 256, 20 epochs, Adam 1e-3 and clip 0.2 both annealed
# linearly to 0, gamma 0.98, GAE lambda 0.8, no entropy bonus, gradient norm 0.5; 100k env steps; evaluation
# every 5k steps (10 episodes, the most likely action). The `gym` and `popgym` presets are exactly these
# hyperparameters; the networks are the companion's (RL-Zoo's ppo_lstm entry also normalises observations and
# rewards and gives the critic its own LSTM; here the LSTM and attention torsos are shared by both heads).
# Torsos (companion.agents.ppo):
#   ppo              actor and critic MLPs (64, 64, tanh) on the current observation
#   ppo-stack4       the same on the last 4 observations
#   ppo-lstm         encoder (64) -> LSTM cell (128) -> both heads
#   ppo-attn-critic  the critic attends over the last 16 steps; the actor is ppo's, on the current observation
#   ppo-attn         actor and critic read the same attention torso (16 steps, 1 block, 4 heads, d 64)
# Tasks: CartPole-v1 with both velocities hidden, popgym PositionOnlyCartPoleEasy (the same idea, popgym's
# version: 200 steps, reward 1/200 per step), popgym RepeatPreviousEasy (name the card dealt 3 steps back).
# Runs are queued seed by seed, so a cut-off session still has every agent at the seeds it reached.
# Finished runs are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
SEEDS="0 1 2 3 4"
AGENTS=("ppo:ppo" "ppo --set frame_stack=4:ppo-stack4" "ppo-lstm:ppo-lstm" "ppo-attn --set attend=critic:ppo-attn-critic"
        "ppo-attn:ppo-attn")
TASKS=("CartPole-v1 --hide 1,3:CartPole-v1-hide1_3" "popgym-PositionOnlyCartPoleEasy-v0:popgym-PositionOnlyCartPoleEasy-v0"
       "popgym-RepeatPreviousEasy-v0:popgym-RepeatPreviousEasy-v0")
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  for seed in $SEEDS; do
    line "results/ch3-cartpole/ppo/CartPole-v1/seed$seed" --algo ppo --env CartPole-v1 --seed "$seed" --steps 100000
    for task in "${TASKS[@]}"; do
      for agent in "${AGENTS[@]}"; do
        line "results/ch3-pomdp/${agent##*:}/${task##*:}/seed$seed" --algo ${agent%%:*} --env ${task%%:*} \
          --seed "$seed" --steps 100000
      done
    done
  done
} | xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
