#!/bin/sh
# azd postdeploy hook: WEBHOOK_KEY becomes a function key of the two webhook functions only. Never
# a host key: a host key also opens the manage API, privacy erase included. The functions exist
# only once the code is deployed, hence after deploy, not in Bicep.
set -eu
: "${AZURE_RESOURCE_GROUP:?run through azd (azd up / azd deploy)}"
: "${AZURE_FUNCTION_APP_NAME:?run azd provision first}"
: "${WEBHOOK_KEY:?WEBHOOK_KEY is missing from the azd environment (the preprovision hook sets it)}"

for fn in graph_notifications graph_lifecycle; do
  az functionapp function keys set -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
    --function-name "$fn" --key-name graph --key-value "$WEBHOOK_KEY" --output none
  echo "function key 'graph' set on $fn"
done
