# Shared by the study drivers (run_platonic_unique.sh, mmimdb/run_mmimdb.sh): option parsing,
# stages run as their own process groups, and a clean stop on SIGINT/SIGTERM. Source it; the
# driver sets OPTIONS (the option names, in capitals), may set ALIASES (an associative array
# of other names for them), and defines remove_temporary_files (what a killed stage leaves).

GRACE_SECONDS=${GRACE_SECONDS:-20} # how long a stopped stage may take to clean up before it is killed
STAGE=setup
CHILD=

die() {
  echo "error: $*" >&2
  exit 2
}

# parse_args "$@": --name VALUE or --name=VALUE sets the variable NAME (capitals, - as _); a name
# in the associative array OPTIONAL_VALUES may come alone (--name), and then gets its value there.
# An empty VALUE (--name= or --name '') is an error: it would silently be the default.
parse_args() {
  local name value flag
  while (($#)); do
    flag=${1%%=*}
    [[ $1 == -h || $1 == --help ]] && { usage; exit 0; }
    name=${1#--}
    name=${name%%=*}
    name=${name^^}
    name=${name//-/_}
    if declare -p ALIASES &>/dev/null && [[ -v "ALIASES[$name]" ]]; then name=${ALIASES[$name]}; fi
    [[ $1 == --* && " ${OPTIONS[*]} " == *" $name "* ]] || die "unknown option $1 (see --help)"
    if [[ $1 == *=* ]]; then
      value=${1#*=}
      shift
    elif declare -p OPTIONAL_VALUES &>/dev/null && [[ -v "OPTIONAL_VALUES[$name]" ]] &&
      { (($# < 2)) || [[ $2 == -* ]]; }; then
      value=${OPTIONAL_VALUES[$name]}
      shift
    else
      (($# >= 2)) || die "$1 needs a value"
      value=$2
      shift 2
    fi
    [[ -n $value ]] || die "$flag needs a value, got an empty one (see --help)"
    printf -v "$name" '%s' "$value"
  done
}

on_signal() {
  trap '' INT TERM
  echo "interrupted ($1) during stage '$STAGE': stopping it" >&2
  [[ -n $CHILD ]] && stop_child
  echo "finished outputs are kept; rerun the same command to resume" >&2
  exit "$2"
}

# ray_flags: the Ray flags of every stage (--ray ADDRESS, --ray_retries N) in RAY_FLAGS, from RAY
# and RAY_RETRIES; --ray_retries without --ray is an error, not a silently ignored option.
ray_flags() {
  RAY_FLAGS=()
  if [[ -n $RAY ]]; then
    RAY_FLAGS=(--ray "$RAY")
    [[ -n $RAY_RETRIES ]] && RAY_FLAGS+=(--ray_retries "$RAY_RETRIES")
  elif [[ -n $RAY_RETRIES ]]; then
    die "--ray_retries needs --ray"
  fi
  return 0
}

# SIGINT to the stage's process group lets Python remove its temporary files; a stage that is
# still running after GRACE_SECONDS is killed, and its temporary files are removed here.
stop_child() {
  kill -INT -- "-$CHILD" 2>/dev/null || return 0
  (sleep "$GRACE_SECONDS" && kill -KILL -- "-$CHILD") 2>/dev/null &
  local watchdog=$! rc=0
  wait "$CHILD" 2>/dev/null || rc=$?
  kill -KILL -- "-$watchdog" 2>/dev/null || true
  wait "$watchdog" 2>/dev/null || true
  if ((rc == 128 + 9)); then remove_temporary_files; fi
}

# run_stage NAME COMMAND...: run COMMAND as its own process group (job control), so that a
# signal can stop all of it; exit with its status, naming the stage, if it fails.
run_stage() {
  STAGE=$1
  shift
  echo "== $STAGE: ${*@Q}" >&2
  "$@" &
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=
  ((rc == 0)) || { echo "error: stage '$STAGE' failed (exit $rc)" >&2; exit "$rc"; }
}

# Every stage in its own process group; SIGINT/SIGTERM stop the running stage cleanly.
install_signal_handlers() {
  set -m
  trap 'on_signal INT 130' INT
  trap 'on_signal TERM 143' TERM
}
