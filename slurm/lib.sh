# Shared by the templates in slurm/ (sourced from "$DSTRAIN_HOME/slurm/lib.sh" inside the job: Slurm runs
# a copy of the batch script from its spool folder, so the templates cannot find this file beside them).
# Nothing here is specific to one cluster.

log() { printf '[%s dstrain-slurm] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'dstrain-slurm: error: %s\n' "$*" >&2; exit 2; }

# The python that runs dstrain: $PYTHON, else the checkout's .venv, else python3 on PATH.
pick_python() {
  if [[ -n ${PYTHON:-} ]]; then :
  elif [[ -x $DSTRAIN_HOME/.venv/bin/python ]]; then PYTHON=$DSTRAIN_HOME/.venv/bin/python
  else PYTHON=python3; fi
  command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable; set PYTHON to the python of the dstrain environment"
}

# A TCP port free on this (the head) node right now, for the rendezvous: drawn below the kernel's
# ephemeral range, so no outgoing connection can take it before torchrun binds it (dstrain.runtime.free_port).
free_port() {
  PYTHONPATH="$DSTRAIN_HOME${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c 'from dstrain.runtime import free_port; print(free_port())'
}

# Fail before any work when an input is missing: every check names the variable to change.
check_file() {  # check_file VAR_NAME PATH WHAT HINT
  [[ -f $2 ]] || die "$1=$2: no such file ($3). $4"
}
check_dir() {   # check_dir VAR_NAME PATH WHAT HINT
  [[ -d $2 ]] || die "$1=$2: no such folder ($3). $4"
}
check_int() {   # check_int VAR_NAME VALUE
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1=$2: must be a positive integer"
}

check_nodes() {  # NODES must match what Slurm allocated: a mismatch would hang the rendezvous
  check_int NODES "$NODES"
  [[ $NODES == "$SLURM_JOB_NUM_NODES" ]] || die "NODES=$NODES but this job was allocated $SLURM_JOB_NUM_NODES" \
    "node(s) ($SLURM_JOB_NODELIST). Submit with 'sbatch --nodes=$NODES ...' or drop NODES (it defaults to the allocation)."
}

check_gpus() {  # more ranks than allocated GPUs would put two ranks on one GPU
  check_int GPUS_PER_NODE "$GPUS_PER_NODE"
  local have=${SLURM_GPUS_ON_NODE:-}
  if [[ -n $have && $have != 0 && $GPUS_PER_NODE -gt $have ]]; then
    die "GPUS_PER_NODE=$GPUS_PER_NODE ranks per node but Slurm gave this job $have GPU(s) per node." \
      "Submit with 'sbatch --gpus-per-node=$GPUS_PER_NODE ...' or set GPUS_PER_NODE=$have."
  fi
}

# Preemption. Slurm sends SIGUSR1 to this batch shell (#SBATCH --signal=B:USR1@SECS) before the time
# limit. The shell passes it on to every process of the job steps (scancel --signal without --batch);
# the trainer ranks then agree at the next step boundary, checkpoint, write RUN/PREEMPTED and exit 0,
# and finish_or_requeue puts the job back in the queue. The per-node launcher ignores USR1/TERM
# (see launch_prefix), so it does not die before its ranks have saved.
GOT_SIGNAL=""
NAGGER_PID=""
forward_signal() {
  GOT_SIGNAL=$1
  log "got SIG$1: asking every rank to checkpoint at the next step boundary"
  scancel --signal="$1" "$SLURM_JOB_ID" || log "scancel --signal=$1 failed (job ending?)"
  # A rank that is still starting up (before the trainer's handler exists) ignores the signal; repeat it
  # every RESIGNAL_SECS until the trainer has acted on it (PREEMPT_MARKER written) or the step ends, so a
  # signal that came early is not lost. RESIGNAL_SECS=0 turns this off.
  if [[ -z $NAGGER_PID && ${RESIGNAL_SECS:-60} != 0 ]]; then
    (
      trap - USR1
      trap 'kill "$s" 2>/dev/null; exit 0' TERM
      while true; do
        sleep "${RESIGNAL_SECS:-60}" & s=$!; wait "$s"
        [[ -n ${PREEMPT_MARKER:-} && -f $PREEMPT_MARKER ]] && exit 0
        scancel --signal="$1" "$SLURM_JOB_ID" 2>/dev/null || true
      done
    ) &
    NAGGER_PID=$!
  fi
}

# Run "$@" (an srun command) in the background so the traps fire while it runs (bash runs a trap
# only between commands), and wait for it to really end. Sets STEP_RC.
run_step() {
  trap 'forward_signal USR1' USR1
  "$@" &
  local pid=$!
  STEP_RC=0
  while true; do
    wait "$pid" && STEP_RC=0 || STEP_RC=$?
    # wait returns >128 when a trapped signal interrupts it; the step is still running then
    kill -0 "$pid" 2>/dev/null || break
  done
  trap - USR1
  if [[ -n $NAGGER_PID ]]; then kill "$NAGGER_PID" 2>/dev/null || true; wait "$NAGGER_PID" 2>/dev/null || true; fi
}

# After the step: requeue when the trainer stopped because of a signal, else end with its status.
finish_or_requeue() {  # finish_or_requeue RUN_DIR
  local run_dir=$1 restarts=${SLURM_RESTART_COUNT:-0}
  if [[ -f $run_dir/PREEMPTED ]]; then
    log "preempted: $(tr -d '\n' < "$run_dir/PREEMPTED"); checkpoint in $run_dir/checkpoints" \
        "(step exit status $STEP_RC)"
    if (( restarts >= MAX_REQUEUES )); then
      die "not requeueing: job $SLURM_JOB_ID was already requeued $restarts time(s) (MAX_REQUEUES=$MAX_REQUEUES);" \
        "resubmit with RUN_DIR=$run_dir to continue from the checkpoint"
    fi
    log "requeueing job $SLURM_JOB_ID (restart $((restarts + 1))); it resumes from the checkpoint"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  if [[ -n $GOT_SIGNAL ]]; then
    log "got SIG$GOT_SIGNAL but the trainer wrote no $run_dir/PREEMPTED (exit status $STEP_RC); not requeueing"
  fi
  if [[ $STEP_RC -ne 0 ]]; then
    die "training step failed with exit status $STEP_RC; see the log above (run folder $run_dir)"
  fi
  log "done: run folder $run_dir"
}

# The wrapper srun starts on each node before the launcher: ignore USR1 and TERM in the launcher (they
# are inherited across exec, also by the ranks until the trainer installs its handlers). Slurm delivers
# signals to every process of the step, ranks included, so the launcher has nothing to forward; ignoring
# them keeps it from killing ranks that are still writing their checkpoint.
launch_prefix=(bash -c 'trap "" USR1 TERM
echo "[dstrain-slurm] node $(hostname) (SLURM_NODEID=$SLURM_NODEID) starts its ranks"
exec "$@"' dstrain-launch)
# ... and torchrun must not install its own SIGTERM handler over that (its default list has SIGTERM).
torchrun_signals=(--signals-to-handle=SIGINT,SIGHUP,SIGQUIT)
