// The function app: Flex Consumption by default, Elastic Premium when a customer needs it.
// Identity everywhere: the host and the app reach Storage with the user-assigned identity
// (AzureWebJobsStorage__*), Application Insights with an Entra token, Key Vault references with
// keyVaultReferenceIdentity. App settings are assembled from the *AppSettings variables below plus
// the `appSettings` the orchestrator passes (registry settings, Key Vault references, GRAPH_CLIENTS
// and the per-client secret references, built in main.bicep); tests/infra/test_settings_parity.py
// reads them. No compile-time import and no lambda here, so that checkov's Bicep parser can scan
// this file (main.bicep and names.bicep hold those).

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

@description('HTTPS base URL Graph calls back on; empty: https://<default host name>.')
param publicBaseUrl string = ''

@description('App settings assembled by main.bicep: registry settings (tuning, URLs, schedules), Key Vault references, GRAPH_CLIENTS and its per-client secret and certificate references.')
param appSettings object

@description('Premium only: the Key Vault reference of the content share connection string (WEBSITE_CONTENTAZUREFILECONNECTIONSTRING).')
param contentShareConnectionReference string = ''

@description('true (main.bicep vnetEnabled): Storage and Key Vault accept only their private endpoints, so everything the host and the app reach, the Premium content share included, goes through the VNet.')
param privateNetworkOnly bool = false

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
  // checkov:skip=CKV_AZURE_225: zone redundancy is offered only in some Flex regions and needs zone-redundant storage and always-ready instances in every zone; the app's state is in Storage and work resumes from the queues after an instance loss, so a zonal outage delays mail, it does not lose it.
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

// One literal siteConfig (checkov reads literals, not variables behind a condition). The Premium-only
// keys are null on Flex, whose runtime and scale live in functionAppConfig. Premium: every instance
// runs every function, so functionAppScaleLimit caps the whole app and the always-ready (minimum)
// instances count toward it.
var siteConfig = {
  minTlsVersion: '1.2'
  scmMinTlsVersion: '1.2'
  ftpsState: 'Disabled'
  http20Enabled: true
  remoteDebuggingEnabled: false
  linuxFxVersion: isFlex ? null : 'Python|${pythonVersion}'
  minimumElasticInstanceCount: isFlex ? null : max(1, min(alwaysReadyInstances, maximumInstanceCount))
  functionAppScaleLimit: isFlex ? null : maximumInstanceCount
  vnetRouteAllEnabled: isFlex ? null : !empty(subnetId)
}

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
  // checkov:skip=CKV_AZURE_222: Graph delivers change notifications to /api/notifications and /api/lifecycle from the internet, so the site must be publicly reachable; the webhook routes are protected by a per-function key and the clientState HMAC, the rest by function keys and optional Entra sign-in (enableAuth).
  // checkov:skip=CKV_AZURE_17: Graph sends no client certificate, so requiring one would refuse every notification.
  // checkov:skip=CKV_AZURE_212: Flex scales per function group from zero (queues) or from alwaysReadyInstances (HTTP); Premium keeps max(1, alwaysReadyInstances) instances. Lost work is retried from the queues.
  // checkov:skip=CKV_AZURE_213: App Service health check is not available on Flex Consumption; GET /api/manage/status reports the app's health instead (docs/deploy.md).
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
    // Premium mounts its content share through the VNet when the account accepts only private
    // endpoints (Flex has no content share).
    vnetContentShareEnabled: !isFlex && privateNetworkOnly
    siteConfig: siteConfig
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

// Host behaviour owned by the platform settings:
// - FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: the host (HttpRequestBodySizeMiddleware) sets Kestrel's
//   MaxRequestBodySize from it, so a larger request is refused with 413 while it is read, before the
//   host buffers it for the worker (default 100 MB). Documented in "App settings reference for Azure
//   Functions", FUNCTIONS_REQUEST_BODY_SIZE_LIMIT. The value is the webhook's own limit
//   (shared/domain/notifications.py MAX_BODY_BYTES); every other HTTP route reads less
//   (tests/infra/test_deploy_hardening.py).
// - PYTHON_ENABLE_OPENTELEMETRY: the Python worker attaches each invocation's trace context (the
//   host's span, host.json telemetryMode "OpenTelemetry") before calling the function, so the
//   app's spans and log records (shared/telemetry.py) join the host's request.
var requestBodySizeLimit = 1000000
var hostAppSettings = {
  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: string(requestBodySizeLimit)
  PYTHON_ENABLE_OPENTELEMETRY: 'true'
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
  WEBSITE_CONTENTAZUREFILECONNECTIONSTRING: contentShareConnectionReference
  WEBSITE_CONTENTSHARE: contentShareName
  WEBSITE_SKIP_CONTENTSHARE_VALIDATION: '1'
}

// App Service Authentication signs users in through the Entra app registration, using this
// identity as a federated credential instead of a client secret.
var authAppSettings = enableAuth ? {
  OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID: identityClientId
} : {}

// checkov applies its checks for the 'web' config resource to every Microsoft.Web/sites/config
// resource, whatever its name; the ones skipped below do not apply to 'appsettings' or
// 'authsettingsV2' (each says why).
resource appSettingsConfig 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: misfire (see above); authentication is the authsettingsV2 resource below, optional (enableAuth) because Graph cannot authenticate to Entra.
  // checkov:skip=CKV_AZURE_63: misfire; HTTP logging is a web-server log of App Service, not kept on Flex; invocations go to Application Insights.
  // checkov:skip=CKV_AZURE_65: misfire; detailed error pages are an IIS feature, not used by a Linux function app.
  // checkov:skip=CKV_AZURE_66: misfire; failed request tracing is an IIS feature, not used by a Linux function app.
  // checkov:skip=CKV_AZURE_80: misfire; the app runs Python, not .NET Framework.
  // checkov:skip=CKV_AZURE_88: misfire; Flex deploys from a blob container, Premium's content share is Azure Files (premiumAppSettings).
  // checkov:skip=CKV_AZURE_222: misfire; the site's public access is discussed on the site resource (Graph must reach the webhook).
  parent: site
  name: 'appsettings'
  properties: union(appSettings, hostAppSettings, storageAppSettings, monitoringAppSettings, siteAppSettings, premiumAppSettings, authAppSettings, additionalAppSettings)
}

// Optional Entra sign-in in front of the manage API and the dashboard. Graph cannot authenticate
// to Entra-protected endpoints, so the two webhook routes are excluded; they stay protected by the
// function key (?code=) and the clientState HMAC. The manage API still needs its function key.
resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (enableAuth) {
  // checkov:skip=CKV_AZURE_13: false positive: checkov's Bicep reader drops the body of a conditional resource, so it cannot see platform.enabled: true below.
  // checkov:skip=CKV_AZURE_63: misfire (see appSettingsConfig); not a 'web' config resource.
  // checkov:skip=CKV_AZURE_65: misfire (see appSettingsConfig); not a 'web' config resource.
  // checkov:skip=CKV_AZURE_66: misfire (see appSettingsConfig); not a 'web' config resource.
  // checkov:skip=CKV_AZURE_80: misfire (see appSettingsConfig); not a 'web' config resource.
  // checkov:skip=CKV_AZURE_88: misfire (see appSettingsConfig); not a 'web' config resource.
  // checkov:skip=CKV_AZURE_222: misfire (see appSettingsConfig); not a 'web' config resource.
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
