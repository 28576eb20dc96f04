# azd preprovision hook (Windows): see preprovision.sh; the same steps.
$ErrorActionPreference = 'Stop'

if (-not $env:GRAPH_CLIENTS) {
  Write-Error ("GRAPH_CLIENTS is not set. Describe the Graph app registration first (docs/deploy.md, step 2): " +
    "azd env set GRAPH_CLIENTS '{""contoso"": {""tenant_id"": ""<tenant>"", ""client_id"": ""<app id>"", ""credential"": ""managed_identity""}}'")
}

function New-RandomHex {
  $bytes = [byte[]]::new(32)
  [System.Security.Cryptography.RandomNumberGenerator]::Fill($bytes)
  -join ($bytes | ForEach-Object { $_.ToString('x2') })
}

if (-not $env:CLIENT_STATE_KEYS) {
  azd env set CLIENT_STATE_KEYS "1:$(New-RandomHex)" | Out-Null
  Write-Host 'CLIENT_STATE_KEYS generated and kept in the azd environment'
}
if (-not $env:WEBHOOK_KEY) {
  azd env set WEBHOOK_KEY (New-RandomHex) | Out-Null
  Write-Host 'WEBHOOK_KEY generated and kept in the azd environment'
}
