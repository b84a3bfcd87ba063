#!/usr/bin/env bash
# IPT training on a Cloud TPU VM or pod slice: create it, install the project on every worker,
# start / watch / stop the job, delete it. `launch/tpu.sh --help` for usage; launch/README.md
# walks through a complete run.
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
# What `setup` copies to the workers: what `pip install -e .` needs, and the configs a job reads.
CODE=(setup.py README.md ipt_jax configs)
# On every worker, relative to the home directory (where ssh commands start): the code, the job's
# log (appended to, so that a resumed run keeps the earlier lines) and the job's process id.
readonly REMOTE_DIR=ipt-jax
readonly LOG=ipt-jax.log
readonly PID=ipt-jax.pid
readonly SUBCOMMANDS='create setup run logs status stop delete'
# Shell commands for a worker: does the job run there; stop here if it does.
readonly IS_RUNNING="kill -0 \"\$(cat $PID 2>/dev/null)\" 2>/dev/null"
readonly NEED_IDLE="if $IS_RUNNING; then echo \"\$(hostname): the job is running:\
 launch/tpu.sh stop first\" >&2; exit 1; fi"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh SUBCOMMAND [--flag=VALUE ...] [--dry_run]

  create  --accelerator=TYPE [--version=RUNTIME] [--spot | --preemptible] [--queued]
          Create a TPU VM, or with --queued a queued resource that creates it when capacity
          is free.
  setup   [--repo=URL [--branch=REF]]
          On every worker: copy this checkout (or clone --repo) to ~/ipt-jax and
          pip install -e . and jax[tpu].
  run     --accelerator=TYPE --workdir=DIR [--data_dir=gs://BUCKET/tensorflow_datasets]
          [--module=ipt_jax.main] [--config=FILE] [--config.FIELD=VALUE ...]
          Start `python3 -u -m MODULE --config=FILE --workdir=DIR ...` in the background on
          every worker (it outlives the ssh session; its log is ~/ipt-jax.log on each worker).
          A multi-host slice needs a gs:// workdir. Running it again resumes from the workdir.
  logs    [--worker=0|N|all] [--lines=100] [--follow]
          Show the end of the job's log.
  status  [--queued]   The TPU's state, and whether the job runs on each worker.
  stop                 Send SIGTERM to the job on every worker: it saves a checkpoint and exits.
  delete  [--queued]   Delete the TPU VM (with --queued: the queued resource and its TPU VM).

Every subcommand takes (defaults from the environment; flags win):
  --name=NAME        TPU name ($IPT_TPU_NAME)                  required
  --zone=ZONE        e.g. us-central2-b ($IPT_TPU_ZONE)        required
  --project=PROJECT  ($IPT_TPU_PROJECT; else gcloud's default project)
  --dry_run          print the gcloud commands, shell-quoted, one per line; run nothing

--accelerator defaults to $IPT_TPU_ACCELERATOR (e.g. v4-32, v5litepod-16, v6e-8); --version
to the runtime recommended for that TPU generation; --config to configs/pretrain.py for the
default module ipt_jax.main (ipt_jax.finetune needs one: --config=configs/finetune.py:sr_x2).
--config.FIELD=VALUE flags reach the program exactly as given (quote values with spaces).
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
  case $1 in
    create) echo name zone project accelerator version ;;
    setup) echo name zone project repo branch ;;
    run) echo name zone project accelerator workdir data_dir module config ;;
    logs) echo name zone project worker lines ;;
    status | stop | delete) echo name zone project ;;
  esac
}
switch_flags() {
  case $1 in
    create) echo dry_run spot preemptible queued ;;
    logs) echo dry_run follow ;;
    status | delete) echo dry_run queued ;;
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
        [[ $SUB == run ]] || die "'$SUB' takes no config overrides (got $arg)"
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

# The runtime (TPU VM image) that Cloud TPU recommends for JAX on each TPU generation.
default_version() {
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime for '$ACCELERATOR': pass --version=RUNTIME" ;;
  esac
}

cmd_create() {
  check_accelerator
  [[ -n $VERSION ]] || default_version
  local kind=()
  if ((SPOT && PREEMPTIBLE)); then
    die "--spot and --preemptible exclude each other"
  elif ((SPOT)); then
    kind=(--spot)
  elif ((PREEMPTIBLE)); then
    ((!QUEUED)) || die "a queued resource cannot be --preemptible; use --spot"
    kind=(--preemptible)
  fi
  if ((QUEUED)); then
    # The queued resource and the TPU VM it creates share the name.
    gcloud_tpus queued-resources create "$NAME" "${WHERE[@]}" --node-id="$NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" ${kind[@]+"${kind[@]}"}
  else
    gcloud_tpus tpu-vm create "$NAME" "${WHERE[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ${kind[@]+"${kind[@]}"}
  fi
}

cmd_setup() {
  if [[ -n $REPO ]]; then
    local clone=(git clone -q --depth=1) get
    [[ -z $BRANCH ]] || clone+=(--branch="$BRANCH")
    get=$(quote_cmd "${clone[@]}" "$REPO" "$REMOTE_DIR")
    on_workers all "$NEED_IDLE; rm -rf $REMOTE_DIR && $get"
  else
    [[ -z $BRANCH ]] || die "--branch needs --repo"
    on_workers all "$NEED_IDLE; rm -rf $REMOTE_DIR && mkdir $REMOTE_DIR"
    gcloud_tpus tpu-vm scp "${CODE[@]/#/$ROOT/}" "$NAME:$REMOTE_DIR" "${WHERE[@]}" \
      --worker=all --recurse
  fi
  # Into the user's site-packages (the TPU VM images have no virtualenv), with a current pip
  # first: the images ship an old one.
  local pip='python3 -m pip install -q -U'
  on_workers all "cd $REMOTE_DIR && $pip pip && $pip -e . 'jax[tpu]'"
}

cmd_run() {
  check_accelerator
  [[ -n $WORKDIR ]] || die "missing --workdir (gs://BUCKET/DIR: checkpoints and TensorBoard logs)"
  if ((MULTI_HOST)) && [[ $WORKDIR != gs://* ]]; then
    die "--workdir must be on GCS (gs://...) for the multi-host slice $ACCELERATOR, so that" \
      "every worker writes the same checkpoints and can resume from them (got '$WORKDIR')"
  fi
  check_module_config
  # -u: unbuffered, so that the log shows every line as soon as it is written.
  local program=(python3 -u -m "$MODULE" --config="$CONFIG" --workdir="$WORKDIR")
  # One JAX process per host; jax.distributed finds the others from the TPU VM metadata.
  ((!MULTI_HOST)) || program+=(--config.distributed=on)
  [[ -z $DATA_DIR ]] || program+=(--config.data.data_dir="$DATA_DIR")
  program+=(${OVERRIDES[@]+"${OVERRIDES[@]}"})
  # setsid (a session of its own) and nohup (SIGHUP ignored) let the job outlive the ssh session.
  # setsid does not fork here, so $! is the job's pid, which is also its process group id (for
  # stop). The job starts in the checkout, to which the configs' paths are relative.
  local need_setup="if [ ! -d $REMOTE_DIR ]; then echo \"\$(hostname): no ~/$REMOTE_DIR:\
 run launch/tpu.sh setup first\" >&2; exit 1; fi"
  local job
  job=$(quote_cmd "${program[@]}")
  local start="(cd $REMOTE_DIR && exec setsid nohup $job) >> $LOG 2>&1 </dev/null & echo \$! > $PID"
  on_workers all "$need_setup; $NEED_IDLE; $start; echo \"\$(hostname): started, log in ~/$LOG\""
}

cmd_logs() {
  [[ $WORKER =~ ^([0-9]+|all)$ ]] || die "bad --worker '$WORKER' (a worker number, or all)"
  [[ $LINES =~ ^[0-9]+$ ]] || die "bad --lines '$LINES' (a number)"
  local follow=''
  ((!FOLLOW)) || follow=' -F'
  on_workers "$WORKER" "tail -n $LINES$follow $LOG"
}

cmd_status() {
  if ((QUEUED)); then
    gcloud_tpus queued-resources describe "$NAME" "${WHERE[@]}" \
      --format='table(name.basename(),state.state)'
  fi
  gcloud_tpus tpu-vm describe "$NAME" "${WHERE[@]}" \
    --format='table(name.basename(),acceleratorType,state,health)'
  on_workers all "if $IS_RUNNING; then echo \"\$(hostname): running (pid \$(cat $PID))\";\
 else echo \"\$(hostname): not running\"; fi"
}

cmd_stop() {
  # The whole process group, so that any helper processes of the job stop too.
  on_workers all "if kill -s TERM -- \"-\$(cat $PID 2>/dev/null)\" 2>/dev/null;\
 then echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): not running\"; fi"
}

cmd_delete() {
  if ((QUEUED)); then
    # --force: also the TPU VM that the queued resource holds.
    gcloud_tpus queued-resources delete "$NAME" "${WHERE[@]}" --force
  else
    gcloud_tpus tpu-vm delete "$NAME" "${WHERE[@]}"
  fi
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
  MODULE=ipt_jax.main CONFIG='' WORKER=0 LINES=100 OVERRIDES=()
  DRY_RUN=0 SPOT=0 PREEMPTIBLE=0 QUEUED=0 FOLLOW=0
  parse_flags "$@"

  [[ -n $NAME ]] || die "missing --name (or set IPT_TPU_NAME)"
  [[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "bad --name '$NAME' (lower-case letters, digits and dashes, starting with a letter)"
  [[ -n $ZONE ]] || die "missing --zone (e.g. us-central2-b; or set IPT_TPU_ZONE)"
  WHERE=(--zone="$ZONE")
  [[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
  "cmd_$SUB"
}

main "$@"
