#!/bin/sh
# azd preprovision hook: the app's two signing secrets, generated once per azd environment and kept
# in it (.azure/<env>/.env, git-ignored). main.parameters.json passes them to the @secure()
# parameters, which store them in Key Vault; a later run passes the same values again.
set -eu

if [ -z "${GRAPH_CLIENTS:-}" ]; then
  echo "GRAPH_CLIENTS is not set. Describe the Graph app registration first (docs/deploy.md, step 2):" >&2
  echo "  azd env set GRAPH_CLIENTS '{\"contoso\": {\"tenant_id\": \"<tenant>\", \"client_id\": \"<app id>\", \"credential\": \"managed_identity\"}}'" >&2
  exit 1
fi

random_hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

if [ -z "${CLIENT_STATE_KEYS:-}" ]; then
  azd env set CLIENT_STATE_KEYS "1:$(random_hex)" >/dev/null
  echo "CLIENT_STATE_KEYS generated and kept in the azd environment"
fi
if [ -z "${WEBHOOK_KEY:-}" ]; then
  azd env set WEBHOOK_KEY "$(random_hex)" >/dev/null
  echo "WEBHOOK_KEY generated and kept in the azd environment"
fi
