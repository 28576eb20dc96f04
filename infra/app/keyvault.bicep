// Key Vault in RBAC mode for the third-party and signing secrets the app cannot replace with an
// identity: CLIENT_STATE_KEYS, WEBHOOK_KEY, the Lime CRM and TRAML API keys, Graph client secrets
// or certificates (when a client does not use the managed identity as a federated credential)
// and, on the Premium plan only, the content share connection string.
//
// A secret is written only when its @secure() parameter is non-empty, so a redeploy without the
// values leaves what the admin stored untouched. Graph client secrets and certificates are never
// parameters: they expire and are rotated in Key Vault directly (docs/deploy.md); the app settings
// reference versionless secret URIs, which the platform refreshes without a redeploy.

import { secretNames } from 'names.bicep'

@description('Key Vault name: 3-24 letters, digits and hyphens, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object = {}

@description('Days a deleted vault or secret can be recovered (7-90).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Purge protection: deleted secrets cannot be purged before the retention period ends. Cannot be turned off once on.')
param enablePurgeProtection bool = true

@description('CLIENT_STATE_KEYS value, e.g. "1:<32+ random characters>". Empty: keep the stored secret.')
@secure()
param clientStateKeys string = ''

@description('WEBHOOK_KEY value: the function key Graph sends back as ?code=. Empty: keep the stored secret.')
@secure()
param webhookKey string = ''

@description('LIME_CRM_API_KEY value. Empty: keep the stored secret.')
@secure()
param limeCrmApiKey string = ''

@description('TRAML_API_KEY value. Empty: keep the stored secret.')
@secure()
param tramlApiKey string = ''

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Access by Azure RBAC only (no access policies): the app identity gets Key Vault Secrets
    // User, the admin optionally Key Vault Secrets Officer (rbac.bicep).
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    // The API rejects false once purge protection is on; null leaves it off.
    enablePurgeProtection: enablePurgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource clientStateKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(clientStateKeys)) {
  parent: vault
  name: secretNames.clientStateKeys
  properties: {
    value: clientStateKeys
    contentType: 'CLIENT_STATE_KEYS'
  }
}

resource webhookKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookKey)) {
  parent: vault
  name: secretNames.webhookKey
  properties: {
    value: webhookKey
    contentType: 'WEBHOOK_KEY'
  }
}

resource limeCrmApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(limeCrmApiKey)) {
  parent: vault
  name: secretNames.limeCrmApiKey
  properties: {
    value: limeCrmApiKey
    contentType: 'LIME_CRM_API_KEY'
  }
}

resource tramlApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(tramlApiKey)) {
  parent: vault
  name: secretNames.tramlApiKey
  properties: {
    value: tramlApiKey
    contentType: 'TRAML_API_KEY'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
