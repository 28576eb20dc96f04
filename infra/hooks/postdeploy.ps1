# azd postdeploy hook (Windows): see postdeploy.sh. WEBHOOK_KEY becomes a function key of the two
# webhook functions only, never a host key.
$ErrorActionPreference = 'Stop'
foreach ($name in 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'WEBHOOK_KEY') {
  if (-not [Environment]::GetEnvironmentVariable($name)) { Write-Error "$name is missing: run through azd (azd up)" }
}
foreach ($fn in 'graph_notifications', 'graph_lifecycle') {
  az functionapp function keys set -g $env:AZURE_RESOURCE_GROUP -n $env:AZURE_FUNCTION_APP_NAME `
    --function-name $fn --key-name graph --key-value $env:WEBHOOK_KEY --output none
  if ($LASTEXITCODE -ne 0) { Write-Error "could not set the function key on $fn" }
  Write-Host "function key 'graph' set on $fn"
}
