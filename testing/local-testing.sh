#!/usr/bin/env bash
# End-to-end test on this machine, as the Go original's local test does it:
# start the server on a certificate made by `kube-audit-rest certs`, post every
# request of a corpus over TLS the way the API server would (to the Service's
# DNS name, trusting only the CA), compare the audit log with the expected
# output (timestamps removed, records sorted by uid, bytes compared), send the
# bad requests the Go test sends, and check the /metrics counters.
#
# Usage: testing/local-testing.sh [CORPUS_DIR]
#   CORPUS_DIR, or $KUBE_AUDIT_REST_CORPUS, holds kube-audit-rest.log (one
#   AdmissionReview per line, the requests) and kube-audit-rest-sorted.log (the
#   log expected for them, sorted by request.uid, without timestamps).
#   Default: ../shared/corpus next to the repository.
# Environment:
#   CORPUS_OPTIONAL=1  exit 0 with a message when the corpus is missing
#                      (otherwise that is an error, exit 2)
#   KUBE_AUDIT_REST    the command to test (default: the repository's
#                      .venv/bin/kube-audit-rest, else kube-audit-rest on PATH)
#   KEEP_WORKDIR=1     keep the temporary folder (certificates, log, output)
# Needs bash, curl and python3. Exit 0 when every check passed, 1 on a failed
# check, 2 on a usage problem.
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
corpus=${1:-${KUBE_AUDIT_REST_CORPUS:-$repo/../shared/corpus}}
requests=$corpus/kube-audit-rest.log
expected=$corpus/kube-audit-rest-sorted.log

note() { printf 'local-testing: %s\n' "$*"; }
fail() {
  printf 'local-testing: FAIL: %s\n' "$*" >&2
  exit 1
}
usage_error() {
  printf 'local-testing: error: %s\n' "$*" >&2
  exit 2
}

if [[ ! -r $requests || ! -r $expected ]]; then
  if [[ ${CORPUS_OPTIONAL:-0} == 1 ]]; then
    note "SKIPPED: no corpus at $corpus (kube-audit-rest.log and kube-audit-rest-sorted.log); CORPUS_OPTIONAL=1 was set"
    exit 0
  fi
  usage_error "no corpus at $corpus: it needs kube-audit-rest.log and kube-audit-rest-sorted.log (give the folder as the first argument or in KUBE_AUDIT_REST_CORPUS; CORPUS_OPTIONAL=1 skips instead)"
fi

cli=${KUBE_AUDIT_REST:-}
if [[ -z $cli ]]; then
  if [[ -x $repo/.venv/bin/kube-audit-rest ]]; then
    cli=$repo/.venv/bin/kube-audit-rest
  else
    cli=$(command -v kube-audit-rest) || usage_error "kube-audit-rest is not installed (pip install . or set KUBE_AUDIT_REST)"
  fi
fi
for tool in curl python3; do
  command -v "$tool" >/dev/null || usage_error "$tool is needed"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/kube-audit-rest-local.XXXXXX")
server_pid=""

stop_server() {
  # SIGTERM (graceful), then at most 30 s, then SIGKILL. Sets server_status.
  server_status=0
  [[ -n $server_pid ]] || return 0
  kill -TERM "$server_pid" 2>/dev/null || true
  local _
  for _ in $(seq 1 300); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
    server_status=137
  fi
  wait "$server_pid" 2>/dev/null || server_status=$?
  server_pid=""
}

cleanup() {
  local status=$?
  trap - EXIT
  stop_server
  if [[ $status -ne 0 && -s $work/server.err ]]; then
    echo "--- last lines of the server's output ($work/server.err):" >&2
    tail -n 20 "$work/server.err" >&2
  fi
  if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then
    note "kept $work"
  else
    rm -rf -- "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- certificates: a CA and a certificate for the Service, as in a cluster ---
service=kube-audit-rest
namespace=kube-audit-rest
if "$cli" certs --help >/dev/null 2>&1; then
  host=$service.$namespace.svc
  "$cli" certs --out-dir "$work/tls" --service "$service" --namespace "$namespace" \
    >"$work/ca-bundle.b64" 2>"$work/certs.err" || fail "kube-audit-rest certs failed: $(cat "$work/certs.err")"
  ca=$work/tls/ca.crt
  cert=$work/tls/tls.crt
  key=$work/tls/tls.key
  # The base64 it prints is the webhook's caBundle: it must be the CA file.
  python3 -c 'import base64,sys; sys.exit(base64.b64decode(open(sys.argv[1]).read().split()[-1]) != open(sys.argv[2], "rb").read())' \
    "$work/ca-bundle.b64" "$ca" || fail "the caBundle printed by certs is not ca.crt in base64"
  note "certificates for $host from 'kube-audit-rest certs'"
else
  host=localhost
  cert=$work/tls/tls.crt
  key=$work/tls/tls.key
  ca=$cert
  note "no 'certs' subcommand in this build: using --self-signed (a certificate for localhost)"
fi

# --- start the server on two free loopback ports (retried if a port was taken) ---
log=$work/kube-audit-rest.log
start_server() {
  local ports
  ports=$(python3 -c 'import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
  read -r port metrics_port <<<"$ports"
  local extra=()
  [[ $host == localhost ]] && extra=(--self-signed)
  "$cli" "${extra[@]}" \
    --cert-filename="$cert" --cert-key-filename="$key" \
    --server-address=127.0.0.1 --metrics-address=127.0.0.1 \
    --server-port="$port" --metrics-port="$metrics_port" \
    --logger-filename="$log" --workers=2 \
    >"$work/server.out" 2>"$work/server.err" &
  server_pid=$!
  local _
  for _ in $(seq 1 300); do # 30 s
    if ! kill -0 "$server_pid" 2>/dev/null; then
      wait "$server_pid" 2>/dev/null || true
      server_pid=""
      return 1
    fi
    if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$metrics_port/readyz" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  fail "the server was not ready within 30 s"
}
started=0
for _ in 1 2 3; do
  if start_server; then
    started=1
    break
  fi
  grep -qi "address already in use\|in use" "$work/server.err" || fail "the server exited at start: $(tail -n 3 "$work/server.err")"
done
[[ $started == 1 ]] || fail "could not find free ports in three tries"
note "server ready on https://$host:$port (metrics on $metrics_port), pid $server_pid"

url=https://$host:$port/log-request
resolve=(--resolve "$host:$port:127.0.0.1")

# post BODY_FILE CONTENT_TYPE -> prints the HTTP status; the body goes to $work/response
post() {
  curl -sS --max-time 10 --cacert "$ca" "${resolve[@]}" -H "Content-Type: $2" \
    --data-binary "@$1" -o "$work/response" -w '%{http_code}' "$url"
}

# --- a client that does not trust our CA must fail the TLS handshake ---
set +e
curl -sS --max-time 10 "${resolve[@]}" -H 'Content-Type: application/json' \
  --data-binary abc -o /dev/null "$url" 2>"$work/untrusted.err"
untrusted=$?
set -e
[[ $untrusted == 60 ]] || fail "a client without our CA got curl status $untrusted, expected 60 (certificate not trusted)"

# --- every request of the corpus, one POST each (with the newline, as the Go test) ---
: >"$work/responses"
count=0
while IFS= read -r line || [[ -n $line ]]; do
  [[ -n $line ]] || continue
  count=$((count + 1))
  printf '%s\n' "$line" >"$work/request"
  code=$(post "$work/request" application/json) || fail "request $count: curl failed"
  [[ $code == 200 ]] || fail "request $count: HTTP $code: $(head -c 300 "$work/response")"
  cat "$work/response" >>"$work/responses"
  printf '\n' >>"$work/responses"
done <"$requests"
[[ $count -gt 0 ]] || fail "the corpus $requests has no requests"
note "posted $count requests, each answered 200"

# --- the Go test's bad requests: each must be refused with 400 ---
bad=0
check_bad() { # NAME CONTENT_TYPE BODY
  printf '%s' "$3" >"$work/request"
  local code
  code=$(post "$work/request" "$2") || fail "$1: curl failed"
  [[ $code == 400 ]] || fail "$1: HTTP $code, expected 400: $(head -c 300 "$work/response")"
  bad=$((bad + 1))
}
check_bad "not JSON at all" application/json 'abc'
check_bad "invalid JSON" application/json '{a: "b"}'
check_bad "no request.uid" application/json '{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"operation":"CREATE","userInfo":{"username":"system:admin"}}}'
check_bad "not sent as JSON" text/plain 'abc'
note "$bad bad requests refused with 400"

curl -fsS --max-time 10 -o "$work/metrics.txt" "http://127.0.0.1:$metrics_port/metrics" || fail "GET /metrics failed"

# --- compare the log, the answers and the counters ---
python3 - "$log" "$expected" "$work/responses" "$work/metrics.txt" "$requests" "$bad" "$work/server.err" <<'PYTHON'
import json
import re
import sys

log_path, expected_path, responses_path, metrics_path, requests_path, bad, stderr_path = sys.argv[1:]
problems = []

# Each record is the request, compacted, plus the timestamp as the last member.
stamp = re.compile(rb',"requestReceivedTimestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"}$')
actual = []
for number, line in enumerate(open(log_path, "rb").read().splitlines(), 1):
    match = stamp.search(line)
    if match is None:
        problems.append(f"log line {number} does not end with a requestReceivedTimestamp")
        continue
    actual.append(line[: match.start()] + b"}")
actual.sort(key=lambda line: json.loads(line)["request"]["uid"])
expected = [line for line in open(expected_path, "rb").read().splitlines() if line.strip()]
def uid_of(line):
    try:
        return json.loads(line)["request"]["uid"]
    except (ValueError, KeyError, TypeError):
        return "?"


if actual != expected:
    wanted, got = {uid_of(l) for l in expected}, {uid_of(l) for l in actual}
    if wanted != got:
        problems.append(
            f"the log's records are not the expected ones: missing uids {sorted(wanted - got)[:5]}, "
            f"unexpected uids {sorted(got - wanted)[:5]}"
        )
    for want_line, got_line in zip(expected, actual):
        if want_line != got_line:
            at = next(
                (i for i, (a, b) in enumerate(zip(want_line, got_line)) if a != b),
                min(len(want_line), len(got_line)),
            )
            start = max(0, at - 60)
            problems.append(
                f"record {uid_of(want_line)} differs from byte {at}:\n"
                f"  expected: ...{want_line[start:at + 60].decode('utf-8', 'replace')}...\n"
                f"  written:  ...{got_line[start:at + 60].decode('utf-8', 'replace')}..."
            )
            break

# Every answer allows the request and echoes its uid.
uids = [json.loads(l)["request"]["uid"] for l in open(requests_path, "rb").read().splitlines() if l.strip()]
answers = [json.loads(l) for l in open(responses_path, "rb").read().splitlines() if l.strip()]
if [a.get("response", {}).get("uid") for a in answers] != uids:
    problems.append("the answers do not echo the requests' uids in order")
if not all(a.get("response", {}).get("allowed") is True for a in answers):
    problems.append("an answer did not allow its request")

# The counters, summed over the workers.
samples = {}
for line in open(metrics_path, encoding="utf-8"):
    if line.startswith("#") or not line.strip():
        continue
    name, _, value = line.rpartition(" ")
    samples[name] = float(value)
want = {
    "kube_audit_rest_http_requests_total": len(uids) + int(bad),
    "kube_audit_rest_valid_requests_processed_total": len(uids),
    'kube_audit_rest_responses_total{code="200"}': len(uids),
    'kube_audit_rest_responses_total{code="400"}': int(bad),
}
if samples.get("kube_audit_rest_tls_handshake_failures_total", 0) < 1:
    problems.append("the client without our CA was not counted in kube_audit_rest_tls_handshake_failures_total")
for name, value in want.items():
    if samples.get(name) != value:
        problems.append(f"metric {name} is {samples.get(name)}, expected {value}")
with open(log_path, "rb") as handle:
    size = len(handle.read())
if samples.get("kube_audit_rest_written_bytes_total") != size:
    problems.append(f"kube_audit_rest_written_bytes_total is {samples.get('kube_audit_rest_written_bytes_total')}, the log has {size} bytes")

# The program's own output is structured: every line on stderr is a JSON object.
for number, line in enumerate(open(stderr_path, encoding="utf-8", errors="replace"), 1):
    if not line.strip():
        continue
    try:
        ok = isinstance(json.loads(line), dict)
    except ValueError:
        ok = False
    if not ok:
        problems.append(f"server stderr line {number} is not a JSON object: {line[:120]!r}")
        break

for problem in problems:
    print(f"local-testing: FAIL: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PYTHON
note "log matches $expected byte for byte ($count records, timestamps removed); answers and metrics as expected"

stop_server
[[ $server_status == 0 ]] || fail "the server exited with status $server_status after SIGTERM"
note "server stopped cleanly"
echo "Test passed"
