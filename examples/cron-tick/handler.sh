#!/usr/bin/env bash
# A scheduled function (cron connector, docs/connectors.md): fjord POSTs to it with an empty
# body on each time of its `schedule` annotation (examples/stack.yml: every minute, UTC).
# X-Scheduled-Time is the time it was due (RFC 3339 UTC), X-Connector says `cron`. What it
# prints on stderr lands in its logs: `fjord logs cron-tick`.
set -eo pipefail

echo "tick for ${Http_X_Scheduled_Time:-an HTTP call} (via ${Http_X_Connector:-http})" >&2
echo "tick ${Http_X_Scheduled_Time:-now}"
