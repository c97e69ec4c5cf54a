#!/usr/bin/env bash
# Chapter 4's delay sweep: which memory holds a cue across a corridor of D steps?
# Task: CueRecall-D{D}-v0 (companion.memory_tasks), a passive T-maze: the cue at step 0, D corridor steps, the
# decision at step D + 1 (+1 right, -1 wrong; chance 0, the best a memoryless agent can do). Episodes are D + 2
# steps long, always.
# Agents: chapter 3's on-policy family, one loop and one set of settings, only the torso differs:
#   ppo          no memory: the current observation (the floor: chance at every delay)
#   ppo-attn     self-attention over a window of the last K = 16 steps (holds the cue only while D + 2 <= 16)
#   ppo-lstm     an LSTM cell, trained by backpropagation through the whole episode
#   ppo-memory   an episodic memory of the last M = 1024 steps read by attention (the whole episode here)
# Settings: the gym preset (RL-Zoo's CartPole PPO: 8 envs, lr 1e-3 and clip 0.2 annealed, gamma 0.98, lambda 0.8),
# except that a rollout is one episode per env (n_steps = D + 2) in one minibatch (batch_size = 8 (D + 2)), so that
# every rollout holds 8 whole episodes: the LSTM's gradient reaches back to the cue and the memory torsos re-read
# whole episodes; 4 epochs per rollout instead of 20 (20 passes over 8 decisions: in a pilot at D = 4 the window
# agent learned, then fell back to one action for every cue; with 4 it held); and the LSTM's forget gate starts
# at bias 1 (Jozefowicz et al. 2015; with CleanRL's 0 it keeps half its cell per step at first, and in a pilot at
# D = 16 it stayed at chance for 4,000 episodes; with 1 it solved it within 500). The last section repeats the
# LSTM at D = 16 with bias 0, to show that. Every run gets the same number of episodes (decisions), 2000,
# whatever D: env steps = 2000 (D + 2). Evaluation every 250 episodes, 50 episodes, the most likely action.
# Off-policy, at D = 4 and 16 only: DRQN (chapter 2) and SA-DQN (chapter 7) with their presets learn from random
# windows of 16 steps (DRQN from a zero state), so no window holds both the cue and the decision once D + 2 > 16.
# Last, 8,000 episodes at D = 64 for ppo-memory and ppo-lstm (results/ch4-delay-8000; LONG=0 skips them): at 2,000
# episodes every agent was at chance there, while a pilot of ppo-memory with 8,000 solved it by episode 1,500 (the
# learning rate anneals over the run, so a longer run also keeps a larger rate for longer). The window and the
# memoryless agent are not run longer: at D + 2 > 16 their input at the decision is the same whatever the cue.
# The SA-DQN runs were made again after commit 740d16e (bootstrap values over the window shifted by one, ch7.sh).
# Runs are queued seed by seed, so a cut-off session still has every agent at the seeds it reached.
# Finished runs are skipped. Usage: bash experiments/ch4_delay.sh [JOBS]   (default 2, one torch thread each)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
SEEDS=${SEEDS:-"0 1 2"}
DELAYS=${DELAYS:-"4 16 64 256"}
EPISODES=2000
AGENTS=("ppo-memory --set memory=1024:ppo-memory" "ppo-lstm --set forget_bias=1:ppo-lstm" "ppo-attn:ppo-attn" "ppo:ppo")
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  for seed in $SEEDS; do
    for delay in $DELAYS; do
      length=$((delay + 2))
      for agent in "${AGENTS[@]}"; do
        line "results/ch4-delay/${agent##*:}/CueRecall-D$delay-v0/seed$seed" --algo ${agent%%:*} \
          --env CueRecall-D$delay-v0 --seed "$seed" --steps $((EPISODES * length)) --set n_steps=$length \
          --set batch_size=$((8 * length)) --set n_epochs=4 --set eval_every=$((250 * length)) --set eval_episodes=50
      done
    done
  done
  for seed in $SEEDS; do  # off-policy: chapter 2's DRQN and chapter 7's SA-DQN (16-step windows), presets as there
    for delay in 4 16; do
      length=$((delay + 2))
      for agent in drqn sadqn; do
        line "results/ch4-delay/$agent/CueRecall-D$delay-v0/seed$seed" --algo $agent --env CueRecall-D$delay-v0 \
          --seed "$seed" --steps $((EPISODES * length)) --set eval_every=$((250 * length)) --set eval_episodes=50
      done
    done
  done
  for seed in $SEEDS; do  # the LSTM with CleanRL's forget bias 0
    line "results/ch4-delay/ppo-lstm-fb0/CueRecall-D16-v0/seed$seed" --algo ppo-lstm --env CueRecall-D16-v0 \
      --seed "$seed" --steps $((EPISODES * 18)) --set n_steps=18 --set batch_size=144 --set n_epochs=4 \
      --set eval_every=4500 --set eval_episodes=50
  done
  if [ "${LONG:-1}" = 1 ]; then  # 8,000 episodes at D = 64 for the two torsos whose input can carry the cue
    for seed in $SEEDS; do
      for agent in "ppo-memory --set memory=1024:ppo-memory" "ppo-lstm --set forget_bias=1:ppo-lstm"; do
        line "results/ch4-delay-8000/${agent##*:}/CueRecall-D64-v0/seed$seed" --algo ${agent%%:*} \
          --env CueRecall-D64-v0 --seed "$seed" --steps $((8000 * 66)) --set n_steps=66 --set batch_size=528 \
          --set n_epochs=4 --set eval_every=$((500 * 66)) --set eval_episodes=50
      done
    done
  fi
} | xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
