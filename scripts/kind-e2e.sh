#!/usr/bin/env bash
# End to end on kind: build both images (CPU trainer), install SeaweedFS and the chart, run the tiny example
# job, and check that it succeeds, that complete checkpoints and the final model are in S3, and that the
# operator (and, while it runs, the trainer) serves its metrics. The cluster is deleted on exit.
#
#   scripts/kind-e2e.sh                 # needs docker, kind, kubectl, helm, and python with boto3 (.venv)
#   KEEP_CLUSTER=1 scripts/kind-e2e.sh  # leave the cluster up to look around (kind delete cluster --name ...)
#
# Settings (environment): KIND_CLUSTER (tooltune-e2e), KIND_NODE_IMAGE (kind's default), E2E_TIMEOUT
# (seconds to wait for the job, 1800), PYTHON (.venv/bin/python, else python3), KUBECTL, HELM (PATH, else
# .tools/bin), S3_PORT / METRICS_PORT / TRAINER_METRICS_PORT (local port-forward ports: 18333, 18080, 19090).
set -euo pipefail

cd "$(dirname "$0")/.."
readonly ROOT=$PWD
readonly CLUSTER=${KIND_CLUSTER:-tooltune-e2e}
readonly TIMEOUT=${E2E_TIMEOUT:-1800}
readonly KEEP=${KEEP_CLUSTER:-0}
readonly S3_PORT=${S3_PORT:-18333}
readonly METRICS_PORT=${METRICS_PORT:-18080}
readonly TRAINER_METRICS_PORT=${TRAINER_METRICS_PORT:-19090}
readonly OPERATOR_IMAGE=tooltune/operator:e2e
readonly TRAINER_IMAGE=tooltune/trainer:e2e-cpu
readonly RELEASE=tooltune
readonly SYSTEM_NS=tooltune-system
readonly JOB=tiny-cpu
readonly JOB_NS=default
readonly DATASET=examples/task-api/task_api_tool_calling.jsonl
readonly DATASET_URI=s3://datasets/task_api_tool_calling.jsonl
readonly OUTPUT_URI=s3://models/tiny-cpu/

log() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf '\ne2e: FAILED: %s\n' "$*" >&2; exit 1; }

tool() {  # the first of: $override, the command on PATH, the repository's .tools/bin copy
  local name=$1 override=$2
  if [[ -n $override ]]; then echo "$override"
  elif command -v "$name" >/dev/null; then command -v "$name"
  elif [[ -x $ROOT/.tools/bin/$name ]]; then echo "$ROOT/.tools/bin/$name"
  else fail "$name not found: install it (make tools provides helm and kubectl in .tools/bin)"
  fi
}

# ---------------------------------------------------------------- prerequisites
command -v docker >/dev/null || fail "docker not found: install Docker (https://docs.docker.com/get-docker/)"
command -v kind >/dev/null || fail "kind not found: install kind (https://kind.sigs.k8s.io/docs/user/quick-start/)"
docker info >/dev/null 2>&1 || fail "the Docker daemon is not reachable (docker info fails)"
KUBECTL=$(tool kubectl "${KUBECTL:-}")
HELM=$(tool helm "${HELM:-}")
if [[ -n ${PYTHON:-} ]]; then :
elif [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python
else PYTHON=python3
fi
"$PYTHON" -c "import boto3" 2>/dev/null || fail "$PYTHON cannot import boto3: run make venv, or set PYTHON"
[[ -f $DATASET ]] || fail "$DATASET is missing: it is the data the example job trains on"
command -v curl >/dev/null || fail "curl not found"

WORK=$(mktemp -d)
export KUBECONFIG=$WORK/kubeconfig  # a kubeconfig of our own: the user's current context is never touched
FORWARDS=()

kube() { "$KUBECTL" "$@"; }
s3() { "$PYTHON" tests/e2e/s3tool.py --endpoint "http://127.0.0.1:$S3_PORT" "$@"; }

diagnose() {
  log "diagnostics"
  kube get tooltunejobs,jobs,pods -A -o wide || true
  kube describe tooltunejob "$JOB" -n "$JOB_NS" || true
  kube logs -n "$SYSTEM_NS" deployment/"$RELEASE" --tail=200 || true
  kube logs -n "$JOB_NS" -l "tooltune.dev/job=$JOB" --all-containers --tail=200 --prefix || true
  kube get events -A --sort-by=.lastTimestamp | tail -40 || true
}

cleanup() {
  local status=$?
  # ${a[@]+...}: an empty array under set -u on bash 3.2 (macOS) too.
  for pid in ${FORWARDS[@]+"${FORWARDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]] && [[ -s $KUBECONFIG ]]; then diagnose; fi
  if [[ $KEEP == 1 ]]; then
    log "keeping cluster $CLUSTER (KUBECONFIG=$KUBECONFIG); delete it with: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT

forward() {  # forward TARGET LOCAL:REMOTE in NAMESPACE, in the background, until the script ends
  local namespace=$1 target=$2 ports=$3
  kube port-forward -n "$namespace" "$target" "$ports" >"$WORK/forward-${ports%%:*}.log" 2>&1 &
  FORWARDS+=("$!")
}

wait_http() {  # wait_http URL SECONDS
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1"; do
    ((SECONDS < deadline)) || return 1
    sleep 1
  done
}

# ---------------------------------------------------------------- images and cluster
# Images first: the builds take longest, and a failed one leaves no cluster behind.
log "building $OPERATOR_IMAGE and $TRAINER_IMAGE"
docker build -f Dockerfile.operator -t "$OPERATOR_IMAGE" .
docker build -f Dockerfile.trainer --target cpu -t "$TRAINER_IMAGE" .

log "creating kind cluster $CLUSTER"
kind_args=(create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s)
[[ -n ${KIND_NODE_IMAGE:-} ]] && kind_args+=(--image "$KIND_NODE_IMAGE")
kind "${kind_args[@]}"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$TRAINER_IMAGE"

# ---------------------------------------------------------------- S3
log "installing SeaweedFS and uploading the example data"
kube apply -f tests/e2e/seaweedfs.yaml
kube rollout status -n storage deployment/seaweedfs --timeout=300s
forward storage service/seaweedfs "$S3_PORT:8333"
s3 wait
s3 mb s3://datasets s3://models
s3 put "$DATASET_URI" "$DATASET"

# ---------------------------------------------------------------- tooltune
log "installing the chart"
"$HELM" install "$RELEASE" charts/tooltune --namespace "$SYSTEM_NS" --create-namespace \
  --set operator.image.repository="${OPERATOR_IMAGE%%:*}" --set operator.image.tag="${OPERATOR_IMAGE##*:}" \
  --set trainer.image.repository="${TRAINER_IMAGE%%:*}" --set trainer.image.tag="${TRAINER_IMAGE##*:}" \
  --wait --timeout 300s
kube rollout status -n "$SYSTEM_NS" deployment/"$RELEASE" --timeout=180s

log "running the example job $JOB"
kube apply -n "$JOB_NS" -f manifests/examples/s3-credentials.yaml
kube apply -n "$JOB_NS" -f manifests/examples/tiny-cpu.yaml

trainer_scraped=0
scrape_trainer() {  # once, while a trainer pod runs: its /metrics must carry training series
  local pod pid
  pod=$(kube get pods -n "$JOB_NS" -l "tooltune.dev/job=$JOB,app.kubernetes.io/component=trainer" \
    --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}' 2>/dev/null || true)
  [[ -n $pod ]] || return 0
  kube port-forward -n "$JOB_NS" "pod/$pod" "$TRAINER_METRICS_PORT:9090" >"$WORK/forward-trainer.log" 2>&1 &
  pid=$!
  if wait_http "http://127.0.0.1:$TRAINER_METRICS_PORT/metrics" 10 \
    && curl -fsS "http://127.0.0.1:$TRAINER_METRICS_PORT/metrics" >"$WORK/trainer-metrics.txt" \
    && grep -q '^tooltune_train_' "$WORK/trainer-metrics.txt"; then
    trainer_scraped=1
    log "trainer $pod serves $(grep -c '^tooltune_train_' "$WORK/trainer-metrics.txt") tooltune_train_* samples"
  fi
  kill "$pid" 2>/dev/null || true
}

deadline=$((SECONDS + TIMEOUT))
while :; do
  phase=$(kube get tooltunejob "$JOB" -n "$JOB_NS" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  step=$(kube get tooltunejob "$JOB" -n "$JOB_NS" -o jsonpath='{.status.progress.step}' 2>/dev/null || true)
  printf '  phase=%s step=%s\n' "${phase:-?}" "${step:-?}" >&2
  case $phase in
    Succeeded) break ;;
    Failed | Cancelled) fail "job $JOB ended $phase" ;;
  esac
  ((SECONDS < deadline)) || fail "job $JOB did not succeed within ${TIMEOUT}s (phase ${phase:-none})"
  ((trainer_scraped)) || scrape_trainer
  sleep 5
done

# ---------------------------------------------------------------- results
log "checking checkpoints and the final model in S3"
s3 ls "$OUTPUT_URI" >"$WORK/objects.txt" || fail "nothing under $OUTPUT_URI"
grep -Eq '/checkpoints/step-[0-9]+/manifest\.json$' "$WORK/objects.txt" \
  || fail "no complete checkpoint (checkpoints/step-N/manifest.json) under $OUTPUT_URI"
grep -q '/final/' "$WORK/objects.txt" || fail "no final model under ${OUTPUT_URI}final/"
latest=$(kube get tooltunejob "$JOB" -n "$JOB_NS" -o jsonpath='{.status.checkpoints.latestUri}')
if [[ -n $latest ]]; then
  s3 ls "$latest" >/dev/null || fail "status.checkpoints.latestUri $latest names nothing in S3"
fi

log "scraping the operator's metrics"
forward "$SYSTEM_NS" "service/$RELEASE-metrics" "$METRICS_PORT:8080"
wait_http "http://127.0.0.1:$METRICS_PORT/metrics" 30 || fail "the operator's /metrics does not answer"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/operator-metrics.txt"
grep -Eq "^tooltune_job_phase\{[^}]*name=\"$JOB\"[^}]*phase=\"Succeeded\"[^}]*\} 1(\.0)?$" \
  "$WORK/operator-metrics.txt" || fail "operator metrics do not report $JOB as Succeeded"

if ((trainer_scraped)); then
  log "trainer metrics: scraped while it ran"
else
  log "trainer metrics: the pod finished before a scrape could reach it (operator metrics were checked)"
fi
kube describe tooltunejob "$JOB" -n "$JOB_NS" | sed -n '/Status:/,$p' | head -40 >&2
echo "e2e: PASSED"
