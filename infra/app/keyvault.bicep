// Key Vault in RBAC mode for the third-party and signing secrets the app cannot replace with an
// identity: CLIENT_STATE_KEYS, WEBHOOK_KEY, the Lime CRM and TRAML API keys, Graph client secrets
// or certificates (when a client does not use the managed identity as a federated credential)
// and, on the Premium plan only, the content share connection string.
//
// A secret is written only when its @secure() parameter is non-empty, so a redeploy without the
// values leaves what the admin stored untouched. Graph client secrets and certificates are never
// parameters: they expire and are rotated in Key Vault directly (docs/deploy.md); the app settings
// reference versionless secret URIs, which the platform refreshes without a redeploy.
//
// The secret names come from names.bicep through main.bicep (a parameter, not an import, so that
// checkov's Bicep parser, which knows no compile-time imports, can scan this file).

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

@description('Key Vault secret names of the app\'s own secrets (names.bicep secretNames).')
param secretNames object

@description('true (main.bicep vnetEnabled): public network access disabled; the app reaches the vault through its private endpoint.')
param privateNetworkOnly bool = false

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
  // checkov:skip=CKV_AZURE_109: the firewall denies by default when privateNetworkOnly (vnetEnabled) is true. Without a VNet the platform resolves the app's Key Vault references over the public endpoint, and access is by Azure RBAC only.
  // checkov:skip=CKV_AZURE_189: public network access is Disabled when privateNetworkOnly (vnetEnabled) is true (see CKV_AZURE_109).
  // checkov:skip=CKV_AZURE_110: purge protection is on by default (enablePurgeProtection = true); checkov cannot evaluate the `? true : null` below, which exists because the API rejects false once protection is on.
  // checkov:skip=CKV_AZURE_42: recoverable = soft delete (always on) + purge protection (see CKV_AZURE_110).
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
    publicNetworkAccess: privateNetworkOnly ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: privateNetworkOnly ? 'Deny' : 'Allow'
    }
  }
}

resource clientStateKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(clientStateKeys)) {
  // checkov:skip=CKV_AZURE_41: no expiry date: the lifetime of this secret is set by whoever issues it (the operator's rotation, Lime CRM, TRAML, docs/deploy.md), and a date chosen here would be reset by every redeploy.
  // checkov:skip=CKV_AZURE_114: false positive: checkov's Bicep reader drops the body of a conditional resource; contentType is set below.
  parent: vault
  name: secretNames.clientStateKeys
  properties: {
    value: clientStateKeys
    contentType: 'CLIENT_STATE_KEYS'
  }
}

resource webhookKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookKey)) {
  // checkov:skip=CKV_AZURE_41: no expiry date: the lifetime of this secret is set by whoever issues it (the operator's rotation, Lime CRM, TRAML, docs/deploy.md), and a date chosen here would be reset by every redeploy.
  // checkov:skip=CKV_AZURE_114: false positive: checkov's Bicep reader drops the body of a conditional resource; contentType is set below.
  parent: vault
  name: secretNames.webhookKey
  properties: {
    value: webhookKey
    contentType: 'WEBHOOK_KEY'
  }
}

resource limeCrmApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(limeCrmApiKey)) {
  // checkov:skip=CKV_AZURE_41: no expiry date: the lifetime of this secret is set by whoever issues it (the operator's rotation, Lime CRM, TRAML, docs/deploy.md), and a date chosen here would be reset by every redeploy.
  // checkov:skip=CKV_AZURE_114: false positive: checkov's Bicep reader drops the body of a conditional resource; contentType is set below.
  parent: vault
  name: secretNames.limeCrmApiKey
  properties: {
    value: limeCrmApiKey
    contentType: 'LIME_CRM_API_KEY'
  }
}

resource tramlApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(tramlApiKey)) {
  // checkov:skip=CKV_AZURE_41: no expiry date: the lifetime of this secret is set by whoever issues it (the operator's rotation, Lime CRM, TRAML, docs/deploy.md), and a date chosen here would be reset by every redeploy.
  // checkov:skip=CKV_AZURE_114: false positive: checkov's Bicep reader drops the body of a conditional resource; contentType is set below.
  parent: vault
  name: secretNames.tramlApiKey
  properties: {
    value: tramlApiKey
    contentType: 'TRAML_API_KEY'
  }
}

output name string = vault.name
output uri string = vault.properties.vaultUri
