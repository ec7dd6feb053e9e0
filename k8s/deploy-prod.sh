#!/usr/bin/env bash
# Deploy prod WITHOUT ArgoCD: migrate first, roll out the app only once the migration Job
# has succeeded. A failed (or timed-out) Job stops the script at once, before the new
# Deployment exists, and prints the Job's log; the running pods stay as they are.
#
#   k8s/deploy-prod.sh                 # kubectl's current context, namespace pacs
#   NAMESPACE=pacs-staging TIMEOUT=15m k8s/deploy-prod.sh
#
# NAMESPACE is where everything goes: overlays/prod/migrate and overlays/prod/app name
# none, so `kubectl -n` decides (overlays/prod, ArgoCD's, sets pacs). Runs on bash 3.2
# (macOS's /bin/bash) as on bash 5.
#
# With ArgoCD, none of this is needed: k8s/argocd/application.yaml syncs
# k8s/overlays/prod, where the Job is a PreSync hook (docs/deploying.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ns=${NAMESPACE:-pacs}
job=pacs-migrate
timeout=${TIMEOUT:-15m}   # the Job's own activeDeadlineSeconds is 900 s

# A Job's pod template cannot change: the previous run's Job goes first.
kubectl -n "$ns" delete job "$job" --ignore-not-found --wait=true
kubectl -n "$ns" apply -k "$here/overlays/prod/migrate"

# Complete OR Failed, whichever comes first (kubectl wait ANDs several --for): two
# waiters, the first to return ends the wait, and the Job's conditions then decide.
# Polled with kill -0 rather than `wait -n`, which bash < 4.3 lacks.
kubectl -n "$ns" wait "job/$job" --for=condition=complete --timeout="$timeout" >/dev/null &
complete=$!
kubectl -n "$ns" wait "job/$job" --for=condition=failed --timeout="$timeout" >/dev/null &
failed=$!
while kill -0 "$complete" 2>/dev/null && kill -0 "$failed" 2>/dev/null; do
  sleep 1
done
kill "$complete" "$failed" 2>/dev/null || true
wait "$complete" "$failed" 2>/dev/null || true

state=$(kubectl -n "$ns" get "job/$job" \
  -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}')
case " $state " in
  *" Complete "*) ;;
  *)
    echo "deploy-prod: migration Job $job did not complete (conditions: ${state:-none});" \
         "not rolling out. Its log:" >&2
    kubectl -n "$ns" logs "job/$job" --all-containers --tail=50 >&2 || true
    exit 1
    ;;
esac

kubectl -n "$ns" apply -k "$here/overlays/prod/app"
kubectl -n "$ns" rollout status deployment/pacs-server --timeout="$timeout"
