#!/usr/bin/env bash
# The screenshots of docs/ui.md: two short MiniLM runs on 400 rows of the bundled SMS spam data, the dashboard
# over them, and headless Chromium's --screenshot of each page.
#   bash scripts/ui_screenshots.sh [WORK_DIR]      (default /tmp/tuneforge-ui-demo; writes docs/images/ui-*.png)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-/tmp/tuneforge-ui-demo}"
port=7867
mkdir -p "$work/recipes/data/sms_spam" docs/images
head -n 400 examples/data/sms_spam/train.jsonl > "$work/recipes/data/sms_spam/train.jsonl"
head -n 300 examples/data/sms_spam/test.jsonl > "$work/recipes/data/sms_spam/test.jsonl"
cp examples/sms_spam.yaml "$work/recipes/sms_spam.yaml"
sed 's/learning_rate: 1.0e-4/learning_rate: -1.0e-4/' examples/sms_spam.yaml > "$work/recipes/sms_spam-bad-lr.yaml"
[ -d "$work/runs/sms-full" ] || tuneforge train "$work/recipes/sms_spam.yaml" --set train.log_every_steps=1 \
  --output "$work/runs/sms-full"
[ -d "$work/runs/sms-lora" ] || tuneforge train "$work/recipes/sms_spam.yaml" --set train.log_every_steps=1 \
  --set method.name=lora --set train.learning_rate=5.0e-3 --output "$work/runs/sms-lora"
tuneforge ui "$work/runs" --recipes "$work/recipes" --port "$port" &
server=$!
trap 'kill -INT $server' EXIT
until curl -fs "http://127.0.0.1:$port/api/runs" >/dev/null; do sleep 1; done
shot() {  # shot NAME PATH HEIGHT
  chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
    --window-size=1300,"$3" --virtual-time-budget=8000 --screenshot="docs/images/ui-$1.png" \
    "http://127.0.0.1:$port$2" 2>/dev/null
}
shot runs "/" 520
shot run "/run?name=sms-lora" 1700
shot compare "/compare?runs=sms-full&runs=sms-lora" 1350
shot launch "/launch?recipe=0:sms_spam-bad-lr.yaml&check=1" 760
