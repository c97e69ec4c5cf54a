#!/usr/bin/env bash
# Chapter 2's "making memory work" runs (#15): the recurrent agents on CartPole with hidden velocities and with
# flicker 0.5, 100k steps, with the remedies switched on by --set, stored under results/ch2-remedies/NAME/ENV/seedN.
# The baselines are chapter 2's stored runs (results/ch2-pomdp/drqn and sadqn, experiments/ch2.sh and ch7.sh).
# Each NAME adds to the one before it (the names are the runs' folders; the chapter labels them):
#   drqn-all           DRQN + the previous action as input (prev_action) + R2D2's stored state with an 8-step
#                      burn-in (stored_state, burn_in) + the learning rate annealed 1e-3 -> 1e-4 over the run
#   drqn-all-t250      ... + the target network copied every 250 env steps instead of 1000
#   drqn-all-t250-tf2  ... + an update every 2 env steps instead of 4 (twice the updates)
#   sadqn-all          SA-DQN + the previous action + GTrXL's gated residuals + lr 3e-4 (not 1e-3), warmed up
#                      over 5k steps and annealed to 3e-5 + the target copied every 250 env steps
#   drqn-stored        (popgym RepeatPreviousEasy) DRQN with the stored state and the 8-step burn-in only, against
#                      chapter 7's DRQN runs (results/ch7-popgym/drqn), which learn the task and then lose it
# Seeds: 0-4 for the last DRQN step, seed 0 for the intermediate DRQN steps and for SA-DQN (velocities hidden
# only: an SA-DQN run with these settings took 16 minutes here, and a variant with DRQN's last settings was
# stopped for time), 0-2 on popgym. Runs were made from a clean worktree at the commit in their meta.json,
# two at a time, one torch thread each; a DRQN run of the last step took 10 to 19 minutes (meta.json's
# wall_seconds; chapter 2's DRQN runs took 3 to 6).
# Finished runs are skipped. Usage: bash experiments/ch2_remedies.sh [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
JOBS=${1:-2}
DRQN_ALL="--set prev_action=true --set stored_state=true --set burn_in=8 --set lr_end=1e-4 --set lr_decay_steps=100000"
SADQN_ALL="--set prev_action=true --set target_update=250 --set gated=true --set lr=3e-4 --set lr_warmup=5000"
SADQN_ALL="$SADQN_ALL --set lr_end=3e-5 --set lr_decay_steps=100000"
line() {  # line OUT ARGS...: one training command, unless OUT already finished
  local out=$1; shift
  [ -f "$out/meta.json" ] && grep -q '"interrupted": false' "$out/meta.json" && return 0
  echo "train $* --out $out"
}
{
  for seed in 0 1 2 3 4; do
    for task in "--hide 1,3:CartPole-v1-hide1_3" "--flicker 0.5:CartPole-v1-flicker0.5"; do
      env_args=${task%%:*}; name=${task##*:}
      line "results/ch2-remedies/drqn-all-t250-tf2/$name/seed$seed" --algo drqn --env CartPole-v1 $env_args \
        --seed $seed --steps 100000 $DRQN_ALL --set target_update=250 --set train_freq=2
      if [ "$seed" = 0 ]; then
        [ "$name" = CartPole-v1-hide1_3 ] && line "results/ch2-remedies/sadqn-all/$name/seed$seed" --algo sadqn \
          --env CartPole-v1 $env_args --seed $seed --steps 100000 $SADQN_ALL
        line "results/ch2-remedies/drqn-all/$name/seed$seed" --algo drqn --env CartPole-v1 $env_args \
          --seed $seed --steps 100000 $DRQN_ALL
        line "results/ch2-remedies/drqn-all-t250/$name/seed$seed" --algo drqn --env CartPole-v1 $env_args \
          --seed $seed --steps 100000 $DRQN_ALL --set target_update=250
      fi
    done
  done
  for seed in 0 1 2; do
    line "results/ch2-remedies/drqn-stored/popgym-RepeatPreviousEasy-v0/seed$seed" --algo drqn \
      --env popgym-RepeatPreviousEasy-v0 --seed $seed --steps 100000 --set stored_state=true --set burn_in=8
  done
} | xargs -P "$JOBS" -I{} sh -c "$PY -m companion {} --no-progress"
