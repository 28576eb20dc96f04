// One Storage account for the Functions host (leases, timers, keys, deployment package) and for
// the app (queues, tables, the embedded CRM's files). Access is by Entra identity only:
// shared-key access is disabled, so no account key or connection string exists anywhere.
//
// The one exception is the Premium (Elastic) plan: it runs the app from an Azure Files content
// share, and Azure Files as a content share can only be mounted with an account key
// (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING). There `allowSharedKeyAccess` is true, the key is
// never read by this template (no listKeys), and the connection string lives only in Key Vault,
// set by the admin (docs/deploy.md). The app itself still uses its identity for queues, tables
// and blobs, so disabling the key later only breaks the content share, not the app's data path.

@description('Storage account name: 3-24 lowercase letters and digits, globally unique.')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the account.')
param tags object = {}

@description('Replication SKU.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param skuName string = 'Standard_LRS'

@description('Allow shared-key (account key and SAS) access: false on Flex Consumption; true only for the Premium plan, whose content file share needs it.')
param allowSharedKeyAccess bool = false

@description('Queues to create (the trigger queues and their -poison queues).')
param queueNames array

@description('Tables to create.')
param tableNames array

@description('Blob containers to create (the app\'s containers and, on Flex, the deployment package container).')
param containerNames array

@description('Azure Files share for the Premium plan\'s app content; empty on Flex (no file share is created).')
param contentShareName string = ''

@description('true (main.bicep vnetEnabled): the account refuses every request that does not come through its private endpoints (public network access disabled, firewall default Deny). false: reachable over its public endpoint, still only with an Entra token (or, on Premium, the content share key).')
param privateNetworkOnly bool = false

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the firewall denies by default when privateNetworkOnly (vnetEnabled) is true. With the default false there is no VNet for the Flex app to come from, so Allow is the only working value; every request still needs an Entra token (shared keys are off on Flex).
  // checkov:skip=CKV_AZURE_59: public network access is Disabled when privateNetworkOnly (vnetEnabled) is true; the default deployment has no private endpoint to reach the account through (see CKV_AZURE_35).
  // checkov:skip=CKV_AZURE_206: the replication SKU is the storageSkuName parameter (Standard_ZRS or Standard_GZRS recommended for new deployments, docs/deploy.md). The default stays Standard_LRS because ARM cannot change an existing account from LRS to ZRS in a redeploy: a new default would break every existing deployment's next `azd provision`.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    // The portal and tools default to Entra authorization too.
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: privateNetworkOnly ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: privateNetworkOnly ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for containerName in containerNames: {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queueName in queueNames: {
  parent: queueService
  name: queueName
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for tableName in tableNames: {
  parent: tableService
  name: tableName
}]

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = if (!empty(contentShareName)) {
  parent: storage
  name: 'default'
}

// Created here because WEBSITE_SKIP_CONTENTSHARE_VALIDATION=1 (needed for a Key Vault reference
// in WEBSITE_CONTENTAZUREFILECONNECTIONSTRING) stops the platform from creating it.
resource contentShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = if (!empty(contentShareName)) {
  parent: fileService
  name: empty(contentShareName) ? 'unused' : contentShareName
  properties: {
    shareQuota: 100
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
