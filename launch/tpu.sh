#!/usr/bin/env bash
# IPT training on a Cloud TPU VM or pod slice: create it (through a queued resource), install the
# project in a Python >= 3.11 virtualenv on every worker, start / watch / stop the job, resume it
# after a pre-emption, delete it. `launch/tpu.sh --help` for usage; launch/README.md walks through
# a complete run.
#
# Every cloud action is one `gcloud` command; --dry_run prints those commands, shell-quoted, one
# per line, instead of running them (launch/common.sh). All flags are checked before the first
# command runs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly ROOT SCRIPT_NAME=tpu.sh
# die, quote_cmd, run_or_print (the --dry_run convention), check_module_config.
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$ROOT/launch/common.sh"
# What `setup` copies to the workers: what `pip install -e .` needs, the configs a job reads and
# launch/ (check_versions.py).
CODE=(setup.py README.md ipt_jax configs launch)
# On every worker, relative to the home directory (where ssh commands start): the code, the job's
# log (appended to, so that a resumed run keeps the earlier lines) and the job's process id.
readonly REMOTE_DIR=ipt-jax
readonly LOG=ipt-jax.log
readonly PID=ipt-jax.pid
# The virtualenv in the checkout (setup makes it; the job runs its python), relative to REMOTE_DIR.
readonly VENV=.venv
readonly SUBCOMMANDS='create setup run resume logs status stop delete'
# How `create` shows a queued resource's state while it waits for ACTIVE, and how often (seconds).
readonly QUEUED_STATE='value(state.state)'
readonly POLL_SECONDS=${IPT_TPU_POLL_SECONDS:-60}
# The TPU VM's state, health and upcoming maintenance (Node.upcomingMaintenance of the TPU API).
readonly TPU_STATE='table(name.basename(),acceleratorType,state,health,'\
'upcomingMaintenance.type:label=MAINTENANCE,'\
'upcomingMaintenance.windowStartTime:label=MAINTENANCE_WINDOW_START,'\
'upcomingMaintenance.maintenanceStatus:label=MAINTENANCE_STATUS)'
# Shell commands for a worker: does the job run there; stop here if it does.
readonly IS_RUNNING="kill -0 \"\$(cat $PID 2>/dev/null)\" 2>/dev/null"
readonly NEED_IDLE="if $IS_RUNNING; then echo \"\$(hostname): the job is running:\
 launch/tpu.sh stop first\" >&2; exit 1; fi"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh SUBCOMMAND [--flag=VALUE ...] [--dry_run]

  create  --accelerator=TYPE [--version=RUNTIME] [--spot] [--direct [--preemptible]]
          [--module=ipt_jax.main] [--config=FILE] [--config.FIELD=VALUE ...] [--skip_preflight]
          First the preflight (python -m ipt_jax.preflight, on this machine, no TPU needed):
          compile the job's config for TYPE and stop, with its one line, if it would not fit.
          Then request the TPU VM as a queued resource and wait (checking its state every
          minute) until it is ACTIVE: capacity that is short now is granted when it frees up.
          --direct: create the TPU VM at once instead (fails when capacity is short).
  setup   [--repo=URL [--branch=REF]] [--python=3.11]
          On every worker: copy this checkout (or clone --repo) to ~/ipt-jax, make the virtualenv
          ~/ipt-jax/.venv with Python --python (uv installs it: the TPU images ship 3.10), install
          the project and jax[tpu] into it, print the versions and fail if any is below the
          project's floors.
  run     --accelerator=TYPE --workdir=DIR [--data_dir=gs://BUCKET/tensorflow_datasets]
          [--module=ipt_jax.main] [--config=FILE] [--config.FIELD=VALUE ...]
          Start `.venv/bin/python -u -m MODULE --config=FILE --workdir=DIR ...` in ~/ipt-jax in
          the background on every worker (it outlives the ssh session; its log is ~/ipt-jax.log).
          A multi-host slice needs a gs:// workdir. Running it again resumes from the workdir.
          When the job loses a process (exit status 75), every worker starts it again, up to
          --max_restarts=3 times.
  resume  the flags of create, setup and run
          After a pre-emption: the preflight, then delete the TPU (and its queued resource),
          create it again, set it up and run the same job, which resumes from the newest
          checkpoint in the workdir.
  logs    [--worker=0|N|all] [--lines=100] [--follow]
          Show the end of the job's log.
  status  [--direct]   The queued resource's state, the TPU's state, health and upcoming
                       maintenance, and whether the job runs on each worker.
  stop                 Send SIGTERM to the job on every worker: it saves a checkpoint and exits.
  delete  [--direct]   Delete the queued resource and its TPU VM (--direct: the TPU VM).

Every subcommand takes (defaults from the environment; flags win):
  --name=NAME        TPU name ($IPT_TPU_NAME)                  required
  --zone=ZONE        e.g. us-central2-b ($IPT_TPU_ZONE)        required
  --project=PROJECT  ($IPT_TPU_PROJECT; else gcloud's default project)
  --dry_run          print the gcloud commands, shell-quoted, one per line; run nothing

--accelerator defaults to $IPT_TPU_ACCELERATOR (e.g. v4-32, v5litepod-16, v6e-8); --version
to the runtime recommended for that TPU generation; --config to configs/pretrain.py for the
default module ipt_jax.main (ipt_jax.finetune needs one: --config=configs/finetune.py:sr_x2).
--config.FIELD=VALUE flags reach the program exactly as given (quote values with spaces). The
preflight runs with $IPT_PYTHON (default python3) from this checkout, where the project and
jax[tpu] are installed; --skip_preflight skips it.
EOF
}

# Is word $1 in the space-separated list $2?
in_list() {
  [[ " $2 " == *" $1 "* ]]
}

# Runs `gcloud compute tpus ARGUMENTS...` (echoed to stderr first), or with --dry_run prints it.
gcloud_tpus() {
  run_or_print gcloud compute tpus "$@"
}

# Runs shell command $2 over ssh on worker $1 (a number, or "all" for every worker at once).
on_workers() {
  gcloud_tpus tpu-vm ssh "$NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

# The flags each subcommand accepts: values (--flag=VALUE) and switches (--flag).
value_flags() {
  local create='accelerator version' setup='repo branch python'
  local run='accelerator workdir data_dir module config max_restarts'
  case $1 in
    create) echo name zone project "$create" module config ;;
    setup) echo name zone project "$setup" ;;
    run) echo name zone project "$run" ;;
    resume) echo name zone project "$create" "$setup" "$run" ;;
    logs) echo name zone project worker lines ;;
    status | stop | delete) echo name zone project ;;
  esac
}
switch_flags() {
  case $1 in
    create | resume) echo dry_run spot preemptible direct skip_preflight ;;
    logs) echo dry_run follow ;;
    status | delete) echo dry_run direct ;;
    setup | run | stop) echo dry_run ;;
  esac
}

parse_flags() {
  local arg flag
  while (($#)); do
    arg=$1
    shift
    case $arg in
      -h | --help) usage; exit 0 ;;
      --config.*=*)
        in_list "$SUB" 'create run resume' || die "'$SUB' takes no config overrides (got $arg)"
        OVERRIDES+=("$arg") ;;
      --config.*) die "write config overrides as --config.FIELD=VALUE (got $arg)" ;;
      --*=*)
        flag=${arg%%=*}
        flag=${flag#--}
        ! in_list "$flag" "$(switch_flags "$SUB")" || die "--$flag takes no value (got $arg)"
        in_list "$flag" "$(value_flags "$SUB")" || die "unknown flag for '$SUB': --$flag"
        set_flag "$flag" "${arg#*=}" ;;
      --*)
        flag=${arg#--}
        if in_list "$flag" "$(switch_flags "$SUB")"; then
          set_flag "$flag" 1
        elif in_list "$flag" "$(value_flags "$SUB")"; then
          die "--$flag needs a value: --$flag=VALUE"
        else
          die "unknown flag for '$SUB': --$flag"
        fi ;;
      *) die "unexpected argument '$arg' (flags are written --flag=VALUE)" ;;
    esac
  done
}

# Sets the variable of flag $1, which is the flag's name in capitals (--data_dir: DATA_DIR), to $2
# (a switch: 1).
set_flag() {
  printf -v "$(tr '[:lower:]' '[:upper:]' <<<"$1")" '%s' "$2"
}

# Checks --accelerator and sets MULTI_HOST. A type is GENERATION-SIZE; the slices of size 8 or
# less (v2-8, v4-8, v5p-8, v5litepod-8, v6e-8, ...) have one host, all larger ones several.
check_accelerator() {
  [[ -n $ACCELERATOR ]] ||
    die "missing --accelerator (e.g. v4-32, v5litepod-16, v6e-8; or set IPT_TPU_ACCELERATOR)"
  [[ $ACCELERATOR =~ ^[a-z0-9]+-([0-9]+)$ ]] ||
    die "bad --accelerator '$ACCELERATOR' (expected a TPU type such as v4-32, v5litepod-16)"
  MULTI_HOST=$((10#${BASH_REMATCH[1]} > 8))
}

# The runtime (TPU VM image) that Cloud TPU recommends for JAX on each TPU generation. Its own
# Python is too old for the project (3.10 on the Ubuntu 22.04 images); setup brings its own.
default_version() {
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime for '$ACCELERATOR': pass --version=RUNTIME" ;;
  esac
}

# --- create -------------------------------------------------------------------------------------

# Checks create's flags; sets VERSION's default and KIND (--spot, --preemptible or nothing).
check_create() {
  check_accelerator
  [[ -n $VERSION ]] || default_version
  KIND=()
  if ((SPOT && PREEMPTIBLE)); then
    die "--spot and --preemptible exclude each other"
  elif ((SPOT)); then
    KIND=(--spot)
  elif ((PREEMPTIBLE)); then
    ((DIRECT)) || die "a queued resource cannot be --preemptible: use --spot, or --direct"
    KIND=(--preemptible)
  fi
}

do_create() {
  if ((DIRECT)); then
    gcloud_tpus tpu-vm create "$NAME" "${WHERE[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ${KIND[@]+"${KIND[@]}"}
  else
    # The queued resource and the TPU VM it creates share the name.
    gcloud_tpus queued-resources create "$NAME" "${WHERE[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" ${KIND[@]+"${KIND[@]}"}
    wait_until_active
  fi
}

# Waits until the queued resource is ACTIVE (its TPU VM is up), asking every POLL_SECONDS; a dry
# run prints the question once.
wait_until_active() {
  local state
  while state=$(gcloud_tpus queued-resources describe "$NAME" "${WHERE[@]}" \
    --format="$QUEUED_STATE"); do
    if ((DRY_RUN)); then
      echo "$state"
      return
    fi
    case $state in
      ACTIVE) return ;;
      FAILED | SUSPENDING | SUSPENDED)
        echo "$SCRIPT_NAME: error: the queued resource $NAME is $state: 'launch/tpu.sh" \
          "delete' it and create it again (launch/tpu.sh resume does both)" >&2
        exit 1 ;;
    esac
    echo "$SCRIPT_NAME: $NAME is ${state:-not listed yet}; asking again in $POLL_SECONDS s" >&2
    sleep "$POLL_SECONDS"
  done
  exit 1  # describe failed; gcloud said why.
}

# Compiles the job's config for the accelerator type on this machine and stops with the
# preflight's line when it would not fit, before any TPU is requested.
do_preflight() {
  ((!SKIP_PREFLIGHT)) || return 0
  local status=0
  (cd "$ROOT" && run_or_print "$LOCAL_PYTHON" -m ipt_jax.preflight --config="$CONFIG" \
    --topology="$ACCELERATOR" --search_batch=false ${OVERRIDES[@]+"${OVERRIDES[@]}"}) || status=$?
  if ((status)); then
    echo "$SCRIPT_NAME: the preflight failed (above): no TPU was requested." \
      "--skip_preflight skips it" >&2
    exit "$status"
  fi
}

cmd_create() {
  check_create
  check_module_config
  do_preflight
  do_create
}

# --- setup --------------------------------------------------------------------------------------

check_setup() {
  [[ -z $BRANCH || -n $REPO ]] || die "--branch needs --repo"
  [[ $PYTHON =~ ^3\.(1[1-9]|[2-9][0-9])$ ]] ||
    die "bad --python '$PYTHON' (a Python version of at least 3.11, e.g. 3.12)"
}

do_setup() {
  if [[ -n $REPO ]]; then
    local clone=(git clone -q --depth=1) get
    [[ -z $BRANCH ]] || clone+=(--branch="$BRANCH")
    get=$(quote_cmd "${clone[@]}" "$REPO" "$REMOTE_DIR")
    on_workers all "$NEED_IDLE; rm -rf $REMOTE_DIR && $get"
  else
    on_workers all "$NEED_IDLE; rm -rf $REMOTE_DIR && mkdir $REMOTE_DIR"
    gcloud_tpus tpu-vm scp "${CODE[@]/#/$ROOT/}" "$NAME:$REMOTE_DIR" "${WHERE[@]}" \
      --worker=all --recurse
  fi
  # The images' Python (3.10 on Ubuntu 22.04) is below the project's floor: uv (from PyPI, into
  # the user's site-packages) installs a standalone CPython and makes the virtualenv with it
  # (--seed: with pip). Then the project and jax[tpu] (libtpu) into it, and the versions check.
  local uv='python3 -m uv' python=$VENV/bin/python
  on_workers all "cd $REMOTE_DIR && python3 -m pip install -q --user -U uv &&\
 $uv python install $PYTHON && $uv venv -q --seed --python $PYTHON $VENV &&\
 $python -m pip install -q -U -e . 'jax[tpu]' && $python launch/check_versions.py"
}

cmd_setup() {
  check_setup
  do_setup
}

# --- run ----------------------------------------------------------------------------------------

# Checks run's flags and sets JOB, the program's command line for a worker's shell.
check_run() {
  check_accelerator
  [[ -n $WORKDIR ]] || die "missing --workdir (gs://BUCKET/DIR: checkpoints and TensorBoard logs)"
  if ((MULTI_HOST)) && [[ $WORKDIR != gs://* ]]; then
    die "--workdir must be on GCS (gs://...) for the multi-host slice $ACCELERATOR, so that" \
      "every worker writes the same checkpoints and can resume from them (got '$WORKDIR')"
  fi
  check_module_config
  # The virtualenv's python; -u: unbuffered, so that the log shows every line as it is written.
  local program=("$VENV/bin/python" -u -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR")
  # One JAX process per host; jax.distributed finds the others from the TPU VM metadata.
  ((!MULTI_HOST)) || program+=(--config.distributed=on)
  [[ -z $DATA_DIR ]] || program+=(--config.data.data_dir="$DATA_DIR")
  program+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
  [[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "bad --max_restarts '$MAX_RESTARTS' (a number)"
  # Exit status 75: the job lost a process (every worker's program ends so); each worker runs it
  # again, up to --max_restarts times, and it resumes from the newest checkpoint.
  local again="n=0; while :; do \"\$@\"; s=\$?; [ \$s -eq $RESTART_STATUS ] &&\
 [ \$n -lt $MAX_RESTARTS ] || exit \$s; n=\$((n + 1)); echo \"\$(hostname): the job lost a\
 process: restart \$n of $MAX_RESTARTS\"; done"
  JOB=$(quote_cmd sh -c "$again" job "${program[@]}")
}

do_run() {
  # setsid (a session of its own) and nohup (SIGHUP ignored) let the job outlive the ssh session.
  # setsid does not fork here, so $! is the job's pid, which is also its process group id (for
  # stop). The job starts in the checkout, to which the configs' paths are relative.
  local need_setup="if [ ! -x $REMOTE_DIR/$VENV/bin/python ]; then echo \"\$(hostname): no\
 ~/$REMOTE_DIR/$VENV: run launch/tpu.sh setup first\" >&2; exit 1; fi"
  local start="(cd $REMOTE_DIR && exec setsid nohup $JOB) >> $LOG 2>&1 </dev/null & echo \$! > $PID"
  on_workers all "$need_setup; $NEED_IDLE; $start; echo \"\$(hostname): started, log in ~/$LOG\""
}

cmd_run() {
  check_run
  do_run
}

# --- resume: delete, create, setup, run -----------------------------------------------------------

cmd_resume() {
  check_create
  check_setup
  check_run
  do_preflight
  # --quiet: no confirmation prompt. Gone already (deleted by hand): go on and create it.
  delete_tpu --quiet ||
    echo "$SCRIPT_NAME: could not delete $NAME (see above); creating it anyway" >&2
  do_create
  do_setup
  do_run
}

# --- logs, status, stop, delete -------------------------------------------------------------------

cmd_logs() {
  [[ $WORKER =~ ^([0-9]+|all)$ ]] || die "bad --worker '$WORKER' (a worker number, or all)"
  [[ $LINES =~ ^[0-9]+$ ]] || die "bad --lines '$LINES' (a number)"
  local follow=''
  ((!FOLLOW)) || follow=' -F'
  on_workers "$WORKER" "tail -n $LINES$follow $LOG"
}

cmd_status() {
  if ((!DIRECT)); then
    gcloud_tpus queued-resources describe "$NAME" "${WHERE[@]}" \
      --format='table(name.basename(),state.state)'
  fi
  gcloud_tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format="$TPU_STATE"
  on_workers all "if $IS_RUNNING; then echo \"\$(hostname): running (pid \$(cat $PID))\";\
 else echo \"\$(hostname): not running\"; fi"
}

cmd_stop() {
  # The whole process group, so that any helper processes of the job stop too.
  on_workers all "if kill -s TERM -- \"-\$(cat $PID 2>/dev/null)\" 2>/dev/null;\
 then echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): not running\"; fi"
}

# Deletes the queued resource and its TPU VM (--force), or with --direct the TPU VM; more gcloud
# flags may follow.
delete_tpu() {
  if ((DIRECT)); then
    gcloud_tpus tpu-vm delete "$NAME" "${WHERE[@]}" "$@"
  else
    gcloud_tpus queued-resources delete "$NAME" "${WHERE[@]}" --force "$@"
  fi
}

cmd_delete() {
  delete_tpu
}

main() {
  if (($# == 0)); then
    usage >&2
    exit 2
  fi
  case $1 in -h | --help | help) usage; exit 0 ;; esac
  SUB=$1
  shift
  in_list "$SUB" "$SUBCOMMANDS" || die "unknown subcommand '$SUB' (one of: $SUBCOMMANDS)"

  NAME=${IPT_TPU_NAME:-} ZONE=${IPT_TPU_ZONE:-} PROJECT=${IPT_TPU_PROJECT:-}
  ACCELERATOR=${IPT_TPU_ACCELERATOR:-} VERSION='' REPO='' BRANCH='' WORKDIR='' DATA_DIR=''
  MODULE=ipt_jax.main CONFIG='' WORKER=0 LINES=100 PYTHON=3.11 MAX_RESTARTS=3 OVERRIDES=()
  DRY_RUN=0 SPOT=0 PREEMPTIBLE=0 DIRECT=0 FOLLOW=0 SKIP_PREFLIGHT=0
  LOCAL_PYTHON=${IPT_PYTHON:-python3}
  parse_flags "$@"

  [[ -n $NAME ]] || die "missing --name (or set IPT_TPU_NAME)"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "bad --name '$NAME' (lower-case letters, digits and dashes, starting with a letter)"
  [[ -n $ZONE ]] || die "missing --zone (e.g. us-central2-b; or set IPT_TPU_ZONE)"
  [[ $POLL_SECONDS =~ ^[0-9]+$ ]] || die "bad IPT_TPU_POLL_SECONDS '$POLL_SECONDS' (seconds)"
  WHERE=(--zone="$ZONE")
  [[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
  "cmd_$SUB"
}

main "$@"
