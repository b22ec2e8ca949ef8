#!/usr/bin/env bash
# The README's first command: builds cdrhook, starts the example receiver on
# 127.0.0.1:8088 and the daemon on examples/quickstart.yaml, drops the sample
# CDRs into the spool the way a phone system would, and shows the result.
# Everything it writes stays under examples/quickstart/. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin cdrhook --example receiver --example spool_writer
bin=target/debug
config=examples/quickstart.yaml
mkdir -p examples/quickstart/spool

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/examples/receiver" & pids+=($!)
"$bin/cdrhook" run --config "$config" & pids+=($!)

# Wait until the daemon answers on its control socket.
for _ in $(seq 100); do
  if "$bin/cdrhook" status --config "$config" >/dev/null 2>&1; then break; fi
  sleep 0.1
done

echo "== dropping the sample CDRs into examples/quickstart/spool"
"$bin/examples/spool_writer" --spool examples/quickstart/spool

# Give the deliveries a moment, then show what the operator sees.
for _ in $(seq 50); do
  if "$bin/cdrhook" status --config "$config" --json 2>/dev/null \
      | grep -q '"pending": 0' ; then break; fi
  sleep 0.1
done
sleep 0.5
echo "== cdrhook status"
"$bin/cdrhook" status --config "$config"
echo
echo "cdrhook is running. In another terminal, try:"
echo "  cargo run --example spool_writer -- --spool examples/quickstart/spool"
echo "  cargo run -- attempts --config $config"
echo "  cargo run -- test --config $config"
echo "Ctrl-C to stop."
wait
