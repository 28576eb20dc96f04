// The function app: Flex Consumption by default, Elastic Premium when a customer needs it.
// Identity everywhere: the host and the app reach Storage with the user-assigned identity
// (AzureWebJobsStorage__*), Application Insights with an Entra token, Key Vault references with
// keyVaultReferenceIdentity. App settings are assembled from the *AppSettings variables below plus
// the `appSettings` the orchestrator passes; tests/infra/test_settings_parity.py reads them.

import { secretNames, keyVaultReference, graphSettingSuffix, graphSecretName, graphCertificateName } from 'names.bicep'

@description('Function app name (also the default host name <name>.azurewebsites.net).')
param name string

@description('App Service plan name.')
param planName string

@description('Azure region.')
param location string

@description('Tags applied to the plan and the site.')
param tags object = {}

@description('"flex": Flex Consumption (default, keyless). "premium": Elastic Premium, for pre-warmed instances with no cold start at all or networking only Premium offers; needs a content file share (see storage.bicep).')
@allowed([
  'flex'
  'premium'
])
param hostingPlan string = 'flex'

@description('Elastic Premium SKU (hostingPlan "premium" only).')
@allowed([
  'EP1'
  'EP2'
  'EP3'
])
param premiumSku string = 'EP1'

@description('Flex Consumption instance memory in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Maximum instance count (Flex: per function group; Premium: functionAppScaleLimit). Derived in main.bicep from Graph\'s per-mailbox limit.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int

@description('Always-ready instances. Flex: for the HTTP group (the webhook answers Graph\'s validation without a cold start). Premium: minimum elastic instances, capped at maximumInstanceCount.')
@minValue(0)
param alwaysReadyInstances int = 0

@description('Resource id of the user-assigned managed identity.')
param identityId string

@description('Client id of the user-assigned managed identity.')
param identityClientId string

@description('Storage account name.')
param storageAccountName string

@description('Blob container for the Flex deployment package.')
param deploymentContainerName string

@description('Azure Files content share name (Premium only).')
param contentShareName string = ''

@description('Application Insights component name.')
param applicationInsightsName string

@description('Key Vault URI, e.g. https://<vault>.vault.azure.net/.')
param vaultUri string

@description('GRAPH_CLIENTS as an object {name: {tenant_id, client_id, credential, ...}}; entries with credential "managed_identity" get this app\'s identity client id when they name none.')
param graphClients object = {}

@description('HTTPS base URL Graph calls back on; empty: https://<default host name>.')
param publicBaseUrl string = ''

@description('Registry app settings assembled by main.bicep (tuning, URLs, schedules, Key Vault references).')
param appSettings object

@description('Extra app settings merged last (for example AzureWebJobs.<function>.Disabled); they win over the generated ones.')
param additionalAppSettings object = {}

@description('Resource id of a subnet for VNet integration (delegated to Microsoft.App/environments on Flex, Microsoft.Web/serverFarms on Premium); empty: none.')
param subnetId string = ''

@description('Put App Service Authentication (Entra ID) in front of everything except /api/notifications and /api/lifecycle.')
param enableAuth bool = false

@description('Client id of the Entra app registration for App Service Authentication (required when enableAuth).')
param authClientId string = ''

var isFlex = hostingPlan == 'flex'
var pythonVersion = '3.11'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex ? {
    name: 'FC1'
    tier: 'FlexConsumption'
  } : {
    name: premiumSku
    tier: 'ElasticPremium'
  }
  properties: {
    reserved: true // Linux
    maximumElasticWorkerCount: isFlex ? null : maximumInstanceCount
  }
}

var commonSiteConfig = {
  minTlsVersion: '1.2'
  scmMinTlsVersion: '1.2'
  ftpsState: 'Disabled'
  http20Enabled: true
}

// Premium: every instance runs every function, so functionAppScaleLimit caps the whole app and the
// always-ready (minimum) instances count toward it.
var premiumSiteConfig = union(commonSiteConfig, {
  linuxFxVersion: 'Python|${pythonVersion}'
  minimumElasticInstanceCount: max(1, min(alwaysReadyInstances, maximumInstanceCount))
  functionAppScaleLimit: maximumInstanceCount
  vnetRouteAllEnabled: !empty(subnetId)
})

// Flex: the runtime, scale and deployment package live in functionAppConfig, not in app settings
// (FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are not allowed there).
var flexFunctionAppConfig = {
  deployment: {
    storage: {
      type: 'blobContainer'
      value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
      authentication: {
        type: 'UserAssignedIdentity'
        userAssignedIdentityResourceId: identityId
      }
    }
  }
  scaleAndConcurrency: {
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    // Always-ready instances do not count toward maximumInstanceCount and only serve the HTTP
    // group (graph_notifications, graph_lifecycle, manage API), which makes no per-mailbox calls
    // except in admin-triggered recovery.
    alwaysReady: alwaysReadyInstances > 0 ? [
      {
        name: 'http'
        instanceCount: alwaysReadyInstances
      }
    ] : []
  }
  runtime: {
    name: 'python'
    version: pythonVersion
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    // Key Vault references resolve with the user-assigned identity, not a system-assigned one.
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: isFlex ? commonSiteConfig : premiumSiteConfig
    functionAppConfig: isFlex ? flexFunctionAppConfig : null
  }
}

var baseUrl = empty(publicBaseUrl) ? 'https://${site.properties.defaultHostName}' : publicBaseUrl

// Identity-based host storage: no AzureWebJobsStorage connection string. The app's own clients
// (shared/adapters/storage_clients.py) read the same settings.
var storageAppSettings = {
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: 'https://${storage.name}.blob.${environment().suffixes.storage}'
  AzureWebJobsStorage__queueServiceUri: 'https://${storage.name}.queue.${environment().suffixes.storage}'
  AzureWebJobsStorage__tableServiceUri: 'https://${storage.name}.table.${environment().suffixes.storage}'
}

// The connection string names the component; with DisableLocalAuth its instrumentation key alone
// cannot ingest anything, the Entra token from the identity is required.
var monitoringAppSettings = {
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
}

// GRAPH_CLIENTS with this app's identity filled in for managed-identity clients, and one Key Vault
// reference per client that authenticates with a secret (the default) or a certificate.
var resolvedGraphClients = toObject(items(graphClients), client => client.key, client => client.value.?credential == 'managed_identity' ? union({ managed_identity_client_id: identityClientId }, client.value) : client.value)
var secretGraphClients = filter(items(graphClients), client => (client.value.?credential ?? 'secret') == 'secret')
var certificateGraphClients = filter(items(graphClients), client => client.value.?credential == 'certificate')
var graphSecretAppSettings = toObject(secretGraphClients, client => 'GRAPH_CLIENT_SECRET_${graphSettingSuffix(client.key)}', client => keyVaultReference(vaultUri, graphSecretName(client.key)))
var graphCertificateAppSettings = toObject(certificateGraphClients, client => 'GRAPH_CLIENT_CERT_${graphSettingSuffix(client.key)}', client => keyVaultReference(vaultUri, graphCertificateName(client.key)))
var graphAppSettings = {
  GRAPH_CLIENTS: string(resolvedGraphClients)
}

var siteAppSettings = {
  PUBLIC_BASE_URL: baseUrl
}

// Premium only. The content share is mounted with an account key: the only shared-key use in the
// deployment. The connection string is a Key Vault reference (the admin stores it, see
// docs/deploy.md), so it appears in no template, parameter file or deployment history;
// WEBSITE_SKIP_CONTENTSHARE_VALIDATION is required for a Key Vault reference here, and the share
// itself is created by storage.bicep.
var premiumAppSettings = isFlex ? {} : {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'python'
  WEBSITE_CONTENTAZUREFILECONNECTIONSTRING: keyVaultReference(vaultUri, secretNames.storageContent)
  WEBSITE_CONTENTSHARE: contentShareName
  WEBSITE_SKIP_CONTENTSHARE_VALIDATION: '1'
}

// App Service Authentication signs users in through the Entra app registration, using this
// identity as a federated credential instead of a client secret.
var authAppSettings = enableAuth ? {
  OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID: identityClientId
} : {}

resource appSettingsConfig 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'appsettings'
  properties: union(appSettings, storageAppSettings, monitoringAppSettings, graphAppSettings, graphSecretAppSettings, graphCertificateAppSettings, siteAppSettings, premiumAppSettings, authAppSettings, additionalAppSettings)
}

// Optional Entra sign-in in front of the manage API and the dashboard. Graph cannot authenticate
// to Entra-protected endpoints, so the two webhook routes are excluded; they stay protected by the
// function key (?code=) and the clientState HMAC. The manage API still needs its function key.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (enableAuth) {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/api/notifications'
        '/api/lifecycle'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          clientSecretSettingName: 'OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID'
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${authClientId}'
            authClientId
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
  dependsOn: [
    appSettingsConfig
  ]
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
output publicBaseUrl string = baseUrl
