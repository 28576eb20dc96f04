// Names shared by main.bicep and the modules, imported at compile time so that the secret a
// module creates and the app setting that references it can never drift apart.
// Pure: no parameters, no resources.

@export()
@description('Key Vault secret names of the app\'s own secrets (the app settings that reference them are in main.bicep).')
var secretNames = {
  clientStateKeys: 'client-state-keys' // CLIENT_STATE_KEYS
  webhookKey: 'webhook-key' // WEBHOOK_KEY
  limeCrmApiKey: 'lime-crm-api-key' // LIME_CRM_API_KEY
  tramlApiKey: 'traml-api-key' // TRAML_API_KEY
  storageContent: 'storage-content-connection' // WEBSITE_CONTENTAZUREFILECONNECTIONSTRING (Premium only)
}

@export()
@description('An App Service Key Vault reference to the current version of a secret (versionless, so rotation needs no redeploy).')
func keyVaultReference(vaultUri string, secretName string) string => '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${secretName})'

@export()
@description('The <NAME> part of GRAPH_CLIENT_SECRET_<NAME>: shared/config.py upper-cases the client name and maps every other character to "_".')
func graphSettingSuffix(client string) string => toUpper(replace(client, '-', '_'))

@export()
@description('Key Vault secret holding the client secret of a GRAPH_CLIENTS entry with credential "secret".')
func graphSecretName(client string) string => 'graph-client-secret-${toLower(replace(client, '_', '-'))}'

@export()
@description('Key Vault certificate (and its backing secret) of a GRAPH_CLIENTS entry with credential "certificate".')
func graphCertificateName(client string) string => 'graph-client-cert-${toLower(replace(client, '_', '-'))}'
