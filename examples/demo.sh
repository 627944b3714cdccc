#!/usr/bin/env bash
# The Sluice demo on a fresh Debian 12 machine: MQTT -> Rust logic -> S3, on local servers.
#
# Installs what is missing (.ci/install), builds the providers as .par.gz (`cargo xtask par`), the
# example Rust logic composed into a step (`sluice compose`), starts Mosquitto (1883) and SeaweedFS
# (S3 on 8333), runs `sluice run examples/pipelines/mqtt-to-s3.yaml` (nats-server, an embedded
# wasmCloud host and wadm), publishes sample sensor readings with mosquitto_pub and prints the S3
# objects that land. Everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

bash .ci/install
hash -r
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/sluice-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "==> building the providers (release, stripped) as .par.gz"
cargo xtask par

echo "==> building the sluice CLI (release: it runs the wasmCloud host)"
cargo build --locked --quiet --release -p sluice-cli
SLUICE=$TARGET/release/sluice

echo "==> building the example Rust logic and composing the step"
(cd examples/logic/rust && env -u RUSTC_WRAPPER -u CARGO_TARGET_DIR RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$TARGET/wasm-guests" /usr/bin/cargo build --quiet --locked --release \
  --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort)
mkdir -p examples/pipelines/steps
"$SLUICE" compose --logic "$TARGET/wasm-guests/wasm32-unknown-unknown/release/sluice_example_logic.wasm" \
  -o examples/pipelines/steps/sensors.wasm

echo "==> starting Mosquitto (127.0.0.1:1883) and SeaweedFS (S3 on 127.0.0.1:8333)"
# At-least-once needs the broker to keep what a subscriber has not acknowledged yet: Mosquitto's
# default drops QoS 1 messages beyond 1,000 queued for one client (README: broker settings).
printf 'listener 1883 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 0\nmax_inflight_messages 1000\n' > "$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" </dev/null >"$WORK/mosquitto.log" 2>&1 &
PIDS+=($!)
export AWS_ACCESS_KEY_ID=demo-key AWS_SECRET_ACCESS_KEY=demo-secret-0123456789
mkdir -p "$WORK/s3"
printf '{"identities":[{"name":"demo","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
  "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$WORK/s3.json"
# Fixed volume sizes and a small disk reserve: SeaweedFS's defaults refuse to store anything on a
# disk with less than 1% free.
weed server -dir="$WORK/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -filer -s3 -s3.config="$WORK/s3.json" \
  -s3.port=8333 -s3.port.iceberg=0 -s3.port.lance=0 -master.port=9333 -volume.port=9340 -filer.port=8888 \
  -volume.max=16 -master.volumeSizeLimitMB=64 -volume.minFreeSpace=16MiB </dev/null >"$WORK/weed.log" 2>&1 &
PIDS+=($!)
s3() { curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$@"; }
for _ in $(seq 1 120); do s3 -X PUT http://127.0.0.1:8333/sensors >/dev/null 2>&1 && break; sleep 0.5; done

echo "==> sluice run examples/pipelines/mqtt-to-s3.yaml"
"$SLUICE" run examples/pipelines/mqtt-to-s3.yaml \
  --secret "customer-a-s3-access-key-id=$AWS_ACCESS_KEY_ID" \
  --secret "customer-a-s3-secret-access-key=$AWS_SECRET_ACCESS_KEY" 2>"$WORK/run.log" &
RUN=$!
PIDS=("$RUN" "${PIDS[@]}")
for _ in $(seq 1 240); do grep -q '^deployed' "$WORK/run.log" && break; sleep 0.5; done
grep -q '^deployed' "$WORK/run.log" || { cat "$WORK/run.log"; echo "the pipeline did not deploy"; exit 1; }
sleep 2

echo "==> publishing 20 sensor readings to sensors/plant-a (and one heartbeat, dropped by the logic)"
for i in $(seq 1 20); do
  mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/plant-a \
    -m "{\"device\":\"sensor-$((i % 4))\",\"temp\":$((18 + i % 7)).$i,\"site\":\"plant-a\",\"seq\":$i}"
done
mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/plant-a -m '{"device":"sensor-0","kind":"heartbeat"}'

keys() { s3 "http://127.0.0.1:8333/sensors?list-type=2&max-keys=1000" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g'; }
landed() {
  local lines=0
  for key in $(keys); do lines=$((lines + $(s3 "http://127.0.0.1:8333/sensors/$key" | wc -l))); done
  echo "$lines"
}
# The S3 sink acknowledges a batch once it is fsynced in its local spool and uploads objects behind
# (an object closes max_object_age, 2s in the spec, after its first record): wait for all 20.
for _ in $(seq 1 60); do
  [ "$(landed)" -ge 20 ] && break
  sleep 1
done

echo
echo "==> objects in s3://sensors"
for key in $(keys); do
  echo "--- $key"
  s3 "http://127.0.0.1:8333/sensors/$key"
done

BURST=${DEMO_READINGS:-20000}
echo
echo "==> end-to-end rate: $BURST more readings (QoS 1) until every one is readable in S3"
for i in $(seq 1 "$BURST"); do
  echo "{\"device\":\"burst-$i\",\"temp\":21.$((i % 10)),\"site\":\"plant-a\"}"
done > "$WORK/burst.txt"
START=$(date +%s.%N)
mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/plant-b -l < "$WORK/burst.txt"
for _ in $(seq 1 600); do
  [ "$(landed)" -ge $((20 + BURST)) ] && break
  sleep 0.5
done
END=$(date +%s.%N)
echo
awk -v n="$BURST" -v start="$START" -v end="$END" -v total="$(landed)" 'BEGIN {
  t = end - start
  printf "%d readings published and readable in S3 after %.1f s: %.0f readings/s end to end (%d lines in the bucket)\n", n, t, n / t, total
}'
echo
kill -INT "$RUN"
wait "$RUN" || true
cat "$WORK/run.log"
