// inbox-functions: Microsoft 365 mailboxes -> Graph change notifications -> CRM helpdesk tickets.
//
// Orchestrator only: parameters, names, modules, outputs. Deploy into a resource group with the
// Azure Developer CLI (azure.yaml at the repository root; infra/main.parameters.json takes azd's
// environment values):
//   azd up
// or with the Azure CLI (infra/cli.parameters.json holds plain values):
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/cli.parameters.json
// then publish the code with `func azure functionapp publish <functionAppName> --python`.
// The step-by-step guide (Entra app, secrets, first mailbox, troubleshooting) is docs/deploy.md.
//
// checkov scans every module (.checkov.yaml); this file and names.bicep are left out because its
// Bicep parser knows no compile-time imports, user-defined functions or lambdas. They declare no
// resource: the imports and lambdas live here so that the modules with resources stay parseable.
//
// Modules (infra/app/):
//   identity.bicep      user-assigned managed identity used for everything
//   storage.bicep       queues, tables, blobs; shared-key access off on Flex
//   monitoring.bicep    Log Analytics + Application Insights (Entra-only ingestion)
//   keyvault.bicep      RBAC-mode vault for the secrets an identity cannot replace
//   network.bicep       vnetEnabled: VNet, app and private endpoint subnets, NAT gateway
//   private-endpoints.bicep  vnetEnabled: private endpoints + DNS for Storage and Key Vault
//   rbac.bicep          every role assignment, named with guid()
//   function-app.bicep  plan, site, app settings, optional App Service Authentication

targetScope = 'resourceGroup'

import { secretNames, keyVaultReference, graphSettingSuffix, graphSecretName, graphCertificateName } from 'app/names.bicep'

// ---------------------------------------------------------------------------------------------
// Parameters: naming and hosting
// ---------------------------------------------------------------------------------------------

@description('Azure region of every resource (Flex Consumption is not offered in every region).')
param location string = resourceGroup().location

@description('Short prefix for resource names: 2-8 lowercase letters or digits.')
@minLength(2)
@maxLength(8)
param namePrefix string = 'inbox'

@description('Function app name; must be globally unique (it is the host name <name>.azurewebsites.net).')
@maxLength(60)
param functionAppName string = 'func-${namePrefix}-${uniqueString(subscription().id, resourceGroup().id, location)}'

@description('Tags applied to every resource.')
param tags object = {}

@description('azd environment name (AZURE_ENV_NAME): tags every resource with azd-env-name. Empty outside azd.')
param environmentName string = ''

@description('"flex": Flex Consumption (default; keyless storage). "premium": Elastic Premium for customers who need pre-warmed instances or Premium networking; it keeps shared-key access on for its content file share.')
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

@description('Always-ready instances: Flex keeps them warm for the HTTP functions (Graph waits only 10 s for the subscription validation answer); Premium keeps this many instances running. 0 on Flex means scale to zero.')
@minValue(0)
@maxValue(20)
param alwaysReadyInstances int = 0

@description('GRAPH_MAILBOX_CONCURRENCY: concurrent Graph requests per mailbox in one instance (1-4). It also sets the maximum instance count, see below.')
@minValue(1)
@maxValue(4)
param graphMailboxConcurrency int = 4

@description('0: derive the maximum instance count from Graph\'s per-mailbox limit (recommended). Any other value overrides it and accepts more 429 responses from Graph.')
@minValue(0)
@maxValue(1000)
param maximumInstanceCountOverride int = 0

@description('Storage replication SKU.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

@description('Days Log Analytics keeps logs and telemetry.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Optional resource id of your own subnet for VNet integration (delegated to Microsoft.App/environments on Flex, Microsoft.Web/serverFarms on Premium). Ignored when vnetEnabled, which builds its own network.')
param subnetId string = ''

@description('true: a VNet for the app (network.bicep) with private endpoints for the Storage queues, tables and blobs (and files on Premium) and Key Vault (private-endpoints.bicep); Storage and Key Vault then deny public network access. The webhook stays public: Graph calls it from the internet.')
param vnetEnabled bool = false

@description('vnetEnabled: address space of the VNet.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('vnetEnabled: address range of the app subnet (VNet integration; at least a /27 on Flex).')
param appSubnetPrefix string = '10.40.1.0/24'

@description('vnetEnabled: address range of the private endpoint subnet.')
param privateEndpointSubnetPrefix string = '10.40.2.0/24'

// ---------------------------------------------------------------------------------------------
// Parameters: Key Vault and secrets
// ---------------------------------------------------------------------------------------------

@description('Key Vault purge protection (recommended; cannot be turned off once on).')
param enablePurgeProtection bool = true

@description('Days a deleted Key Vault or secret stays recoverable (7-90).')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Optional object id of the admin (user or group) who stores and rotates secrets: gets Key Vault Secrets Officer on the vault. Find yours with `az ad signed-in-user show --query id -o tsv`.')
param adminPrincipalId string = ''

@description('Type of adminPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param adminPrincipalType string = 'User'

@description('CLIENT_STATE_KEYS, e.g. "1:<32+ random characters>". Pass on the command line or set the Key Vault secret yourself; empty keeps what the vault holds. Never put it in main.parameters.json.')
@secure()
param clientStateKeys string = ''

@description('WEBHOOK_KEY: the function key Graph sends back as ?code=; register the same value as a function key of graph_notifications and graph_lifecycle only, never as a host key, which would also open the manage API (docs/deploy.md; azd does it in infra/hooks/postdeploy). Empty keeps what the vault holds.')
@secure()
param webhookKey string = ''

@description('LIME_CRM_API_KEY (crmBackend "lime"). Empty keeps what the vault holds.')
@secure()
param limeCrmApiKey string = ''

@description('TRAML_API_KEY (when autoreplies are on). Empty keeps what the vault holds.')
@secure()
param tramlApiKey string = ''

// ---------------------------------------------------------------------------------------------
// Parameters: application settings (names as in shared/config.py)
// ---------------------------------------------------------------------------------------------

@description('GRAPH_CLIENTS as an object: {"<name>": {"tenant_id", "client_id", "credential": "managed_identity" | "secret" | "certificate", "secret_expires"?}}. managed_identity entries get this app\'s identity automatically; secret and certificate entries get a GRAPH_CLIENT_SECRET_<NAME> / GRAPH_CLIENT_CERT_<NAME> Key Vault reference.')
param graphClients object = {}

@description('PUBLIC_BASE_URL: HTTPS base Graph calls back on. Empty: https://<function app default host name>. Set it when a custom domain or gateway fronts the app.')
param publicBaseUrl string = ''

@description('GRAPH_BASE_URL (change only for national clouds).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('GRAPH_AUTHORITY_HOST (change only for national clouds).')
param graphAuthorityHost string = 'https://login.microsoftonline.com'

@description('OUTBOUND_CA_BUNDLE: absolute path of a PEM file shipped with the app, for an on-premise CRM with a private CA. Empty: the default trust store.')
param outboundCaBundle string = ''

@description('CRM_BACKEND: "table" (embedded CRM, for evaluation) or "lime".')
@allowed([
  'table'
  'lime'
])
param crmBackend string = 'table'

@description('LIME_CRM_URL: https://<host>/<database> (crmBackend "lime").')
param limeCrmUrl string = ''

// Lime CRM schema names (crmBackend "lime"): the seed's names by default; docs/lime.md.
@description('LIME_PROP_HELPDESK_NUMBER: helpdesk property holding the ticket number.')
param limePropHelpdeskNumber string = 'helpdesknumber'

@description('LIME_PROP_HELPDESK_STATUS: helpdesk status option property.')
param limePropHelpdeskStatus string = 'helpdeskstatus'

@description('LIME_STATUS_STARTED: option key of an open ticket.')
param limeStatusStarted string = 'started'

@description('LIME_STATUS_DONE: option key of a closed ticket.')
param limeStatusDone string = 'done'

@description('LIME_STATUS_PARKED: option key of a parked ticket.')
param limeStatusParked string = 'parked'

@description('LIME_HISTORY_TYPE_RECEIVED: history.type option key of a received mail.')
param limeHistoryTypeReceived string = 'receivedemail'

@description('LIME_HISTORY_TYPE_SENT: history.type option key of a sent autoreply.')
param limeHistoryTypeSent string = 'sentemail'

@description('LIME_HISTORY_TYPE_COMMENT: history.type option key of a comment.')
param limeHistoryTypeComment string = 'comment'

@description('LIME_KEY_PROPERTY: text property (40+ characters) on helpdesk, history, document and company holding the idempotency key. Without it creates are not idempotent (docs/lime.md).')
param limeKeyProperty string = 'inboxkey'

@description('LIME_PROP_MESSAGE_IDS: text property on helpdesk holding Message-IDs for threading; empty: subject tag only.')
param limePropMessageIds string = 'inboxmessageids'

@description('LIME_PROP_COMPANY_WEBSITE: company web site property matched against sender domains; empty: not used.')
param limePropCompanyWebsite string = 'www'

@description('LIME_PROP_COMPANY_EMAIL: company e-mail property matched against sender domains; empty: not used.')
param limePropCompanyEmail string = 'email'

@description('LIME_RATE_LIMIT_REQUESTS: Lime requests per window and worker process (Lime Cloud: 3000 per 5 minutes per IP, shared by all instances); 0: no client-side limit.')
@minValue(0)
param limeRateLimitRequests int = 3000

@description('LIME_RATE_LIMIT_WINDOW_SECONDS: the window of LIME_RATE_LIMIT_REQUESTS.')
@minValue(1)
param limeRateLimitWindowSeconds int = 300

@description('TRAML_BASE_URL: https://app.bwz.se/bedrock/<account>/api; empty disables autoreplies.')
param tramlBaseUrl string = ''

@description('AUTOREPLY_LIMIT_COUNT: at most this many autoreplies per recipient per window (loop and abuse limit).')
@minValue(1)
@maxValue(500)
param autoreplyLimitCount int = 10

@description('AUTOREPLY_LIMIT_WINDOW_MINUTES: the window of the per-recipient autoreply limit.')
@minValue(1)
param autoreplyLimitWindowMinutes int = 180

@description('SWEEP_GRACE_SECONDS: the sweep leaves mail younger than this to its notification.')
@minValue(0)
param sweepGraceSeconds int = 300

@description('FAILED_RETRY_MAX_AGE_HOURS: the sweep retries Failed mail younger than this.')
@minValue(0)
param failedRetryMaxAgeHours int = 24

@description('SYNC_HISTORY_LENGTH: sync log entries kept per Graph client.')
@minValue(1)
param syncHistoryLength int = 50

@description('CUSTOM_SELECT: extra Graph message properties, comma-separated.')
param customSelect string = ''

@description('PROCESSING_EXTENSION: package.module:function shipped with the app, called before the CRM writes (docs/extensions.md). Empty: the default policy only.')
param processingExtension string = ''

@description('LEDGER_RETENTION_DAYS: ledger rows, tasks and logs older than this are purged.')
@minValue(1)
param ledgerRetentionDays int = 90

// How a mail becomes CRM objects (README "Mail to CRM").
@description('NOTE_FORMAT: history note of a mail, "html" (sanitised) or "text".')
@allowed([
  'html'
  'text'
])
param noteFormat string = 'html'

@description('NOTE_MAX_CHARS: longest history note (Lime: 4000); a longer mail is cut and kept whole as a document.')
@minValue(500)
param noteMaxChars int = 4000

@description('TITLE_MAX_CHARS: longest ticket title (Lime: 128); a longer subject is cut and kept whole as a document.')
@minValue(20)
param titleMaxChars int = 128

@description('ATTACHMENT_MAX_BYTES: per-file limit; larger attachments are skipped by their metadata, never downloaded.')
@minValue(1)
param attachmentMaxBytes int = 52428800

@description('ATTACHMENTS_INLINE: inline parts stored as documents, "referenced" (shown in the body), "all" or "none".')
@allowed([
  'referenced'
  'all'
  'none'
])
param attachmentsInline string = 'referenced'

@description('FREE_MAIL_DOMAINS: extra free-mail domains (comma-separated) that never match a company by domain.')
param freeMailDomains string = ''

@description('OWN_MESSAGE_ID_HOSTS: hosts (comma-separated) only our own sending systems put in Message-IDs; such mail is ours and never opens a ticket.')
param ownMessageIdHosts string = ''

@description('RENEW_SCHEDULE: NCRONTAB (six fields, UTC) of renew_subscriptions.')
param renewSchedule string = '0 */30 * * * *'

@description('SWEEP_SCHEDULE: NCRONTAB (six fields, UTC) of sweep_inbox.')
param sweepSchedule string = '0 */10 * * * *'

@description('SWEEP_MAX_PER_RUN: jobs one sweep run enqueues per mailbox at most (Graph budget).')
@minValue(1)
param sweepMaxPerRun int = 500

@description('PURGE_SCHEDULE: NCRONTAB (six fields, UTC) of purge_retention.')
param purgeSchedule string = '0 30 3 * * *'

@description('Extra app settings merged last, e.g. {"AzureWebJobs.sweep_inbox.Disabled": "true"}.')
param additionalAppSettings object = {}

// ---------------------------------------------------------------------------------------------
// Parameters: App Service Authentication
// ---------------------------------------------------------------------------------------------

@description('Require Entra ID sign-in (App Service Authentication) for everything except /api/notifications and /api/lifecycle, which Graph calls without a token.')
param enableAuth bool = false

@description('Client id of the Entra app registration used for sign-in (required when enableAuth).')
param authClientId string = ''

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, location))
// azd finds the resource group by azd-env-name and the app to deploy by azd-service-name (the
// service `app` in azure.yaml).
var allTags = empty(environmentName) ? tags : union(tags, { 'azd-env-name': environmentName })
var appTags = union(allTags, { 'azd-service-name': 'app' })
var compactPrefix = toLower(replace(namePrefix, '-', ''))
var names = {
  identity: 'id-${namePrefix}-${resourceToken}'
  storage: take('st${compactPrefix}${resourceToken}', 24)
  vault: take('kv-${namePrefix}-${resourceToken}', 24)
  logAnalytics: 'log-${namePrefix}-${resourceToken}'
  applicationInsights: 'appi-${namePrefix}-${resourceToken}'
  plan: 'plan-${namePrefix}-${resourceToken}'
  vnet: 'vnet-${namePrefix}-${resourceToken}'
  deploymentContainer: 'app-package-${resourceToken}'
  contentShare: take(toLower(functionAppName), 63)
}

// Public contracts (docs/design.md): the trigger queues with the host's -poison queues, the
// tables, and the embedded CRM's file container.
var queueNames = [
  'inbox-messages'
  'inbox-messages-poison'
  'inbox-autoreplies'
  'inbox-autoreplies-poison'
  'inbox-lifecycle'
  'inbox-lifecycle-poison'
  'inbox-recovery'
  'inbox-recovery-poison'
]
var tableNames = [
  'mailboxes'
  'subscriptions'
  'ledger'
  'synclog'
  'recoverytasks'
  'ratelimits'
  'crmperson'
  'crmcompany'
  'crmhelpdesk'
  'crmhistory'
  'crmdocument'
  'crmcounter'
]
var appContainerNames = [
  'crm-files'
]

// ---------------------------------------------------------------------------------------------
// Maximum instance count, derived from Graph's throttling limit.
//
// Graph allows G = 4 concurrent requests per app registration and mailbox, summed over ALL
// instances. One instance runs at most batchSize + newBatchThreshold queue messages of a queue
// function at once (host.json: 32 + 32 = 64), and the per-mailbox limiter in each worker lets at
// most c = GRAPH_MAILBOX_CONCURRENCY of them call Graph for the same mailbox. With N instances a
// busy mailbox can see N * min(c, batchSize + newBatchThreshold) concurrent requests, so
//
//   maximumInstanceCount = max(1, floor(G / min(c, batchSize + newBatchThreshold)))
//
//   c = 4 (default) -> 1 instance    c = 2 -> 2 instances    c = 1 -> 4 instances
//
// One instance still works 64 mails at once across mailboxes; lower c to trade per-mailbox
// parallelism for more instances (more CPU). On Flex the limit applies per function group, so
// process_message gets its own N; the sweep timer, handle_lifecycle and admin recovery add a few
// requests on top, which Graph answers with 429 + Retry-After and the app treats as backpressure.
// ---------------------------------------------------------------------------------------------

var graphConcurrentRequestsPerMailbox = 4
var hostJson = loadJsonContent('../host.json')
var hostQueueBatchSize = hostJson.extensions.queues.batchSize
var hostQueueNewBatchThreshold = hostJson.extensions.queues.newBatchThreshold
var perInstanceMailboxConcurrency = min(graphMailboxConcurrency, hostQueueBatchSize + hostQueueNewBatchThreshold)
var derivedMaximumInstanceCount = max(1, graphConcurrentRequestsPerMailbox / perInstanceMailboxConcurrency)
var maximumInstanceCount = maximumInstanceCountOverride > 0 ? maximumInstanceCountOverride : derivedMaximumInstanceCount

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

module identity 'app/identity.bicep' = {
  name: 'identity'
  params: {
    name: names.identity
    location: location
    tags: allTags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    name: names.storage
    location: location
    tags: allTags
    skuName: storageSkuName
    // Keyless on Flex. Premium's content file share can only be mounted with the account key.
    allowSharedKeyAccess: hostingPlan == 'premium'
    queueNames: queueNames
    tableNames: tableNames
    containerNames: hostingPlan == 'flex' ? concat(appContainerNames, [names.deploymentContainer]) : appContainerNames
    contentShareName: hostingPlan == 'premium' ? names.contentShare : ''
    privateNetworkOnly: vnetEnabled
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: allTags
    retentionInDays: logRetentionInDays
  }
}

module vault 'app/keyvault.bicep' = {
  name: 'vault'
  params: {
    name: names.vault
    location: location
    tags: allTags
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: enablePurgeProtection
    secretNames: secretNames
    privateNetworkOnly: vnetEnabled
    clientStateKeys: clientStateKeys
    webhookKey: webhookKey
    limeCrmApiKey: limeCrmApiKey
    tramlApiKey: tramlApiKey
  }
}

module network 'app/network.bicep' = if (vnetEnabled) {
  name: 'network'
  params: {
    name: names.vnet
    location: location
    tags: allTags
    hostingPlan: hostingPlan
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
  }
}

module privateEndpoints 'app/private-endpoints.bicep' = if (vnetEnabled) {
  name: 'private-endpoints'
  params: {
    location: location
    tags: allTags
    vnetId: vnetEnabled ? network.outputs.id : ''
    subnetId: vnetEnabled ? network.outputs.privateEndpointSubnetId : ''
    storageAccountName: storage.outputs.name
    // Premium mounts its content share (Azure Files) through the VNet as well.
    storageServices: hostingPlan == 'premium' ? [
      'blob'
      'queue'
      'table'
      'file'
    ] : [
      'blob'
      'queue'
      'table'
    ]
    vaultName: vault.outputs.name
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    vaultName: vault.outputs.name
    adminPrincipalId: adminPrincipalId
    adminPrincipalType: adminPrincipalType
  }
}

// App settings owned by the orchestrator: every setting of shared/config.py that is not about
// identity, storage, monitoring or Graph credentials (those are built in function-app.bicep).
var registryAppSettings = {
  GRAPH_BASE_URL: graphBaseUrl
  GRAPH_AUTHORITY_HOST: graphAuthorityHost
  OUTBOUND_CA_BUNDLE: outboundCaBundle
  CRM_BACKEND: crmBackend
  LIME_CRM_URL: limeCrmUrl
  TRAML_BASE_URL: tramlBaseUrl
  AUTOREPLY_LIMIT_COUNT: string(autoreplyLimitCount)
  AUTOREPLY_LIMIT_WINDOW_MINUTES: string(autoreplyLimitWindowMinutes)
  SWEEP_GRACE_SECONDS: string(sweepGraceSeconds)
  FAILED_RETRY_MAX_AGE_HOURS: string(failedRetryMaxAgeHours)
  SYNC_HISTORY_LENGTH: string(syncHistoryLength)
  CUSTOM_SELECT: customSelect
  PROCESSING_EXTENSION: processingExtension
  LEDGER_RETENTION_DAYS: string(ledgerRetentionDays)
  NOTE_FORMAT: noteFormat
  NOTE_MAX_CHARS: string(noteMaxChars)
  TITLE_MAX_CHARS: string(titleMaxChars)
  ATTACHMENT_MAX_BYTES: string(attachmentMaxBytes)
  ATTACHMENTS_INLINE: attachmentsInline
  FREE_MAIL_DOMAINS: freeMailDomains
  OWN_MESSAGE_ID_HOSTS: ownMessageIdHosts
  GRAPH_MAILBOX_CONCURRENCY: string(graphMailboxConcurrency)
  // %RENEW_SCHEDULE% / %SWEEP_SCHEDULE%: the host fails indexing when they are missing.
  RENEW_SCHEDULE: renewSchedule
  SWEEP_SCHEDULE: sweepSchedule
  SWEEP_MAX_PER_RUN: string(sweepMaxPerRun)
  // %PURGE_SCHEDULE%: the retention purge timer.
  PURGE_SCHEDULE: purgeSchedule
}

// Secrets reach the app only as Key Vault references. Optional ones stay empty when unused, so the
// app never mistakes an unresolved "@Microsoft.KeyVault(...)" string for a key.
// Lime CRM schema names and client-side rate limit (shared/adapters/crm_lime/, docs/lime.md).
var limeAppSettings = {
  LIME_PROP_HELPDESK_NUMBER: limePropHelpdeskNumber
  LIME_PROP_HELPDESK_STATUS: limePropHelpdeskStatus
  LIME_STATUS_STARTED: limeStatusStarted
  LIME_STATUS_DONE: limeStatusDone
  LIME_STATUS_PARKED: limeStatusParked
  LIME_HISTORY_TYPE_RECEIVED: limeHistoryTypeReceived
  LIME_HISTORY_TYPE_SENT: limeHistoryTypeSent
  LIME_HISTORY_TYPE_COMMENT: limeHistoryTypeComment
  LIME_KEY_PROPERTY: limeKeyProperty
  LIME_PROP_MESSAGE_IDS: limePropMessageIds
  LIME_PROP_COMPANY_WEBSITE: limePropCompanyWebsite
  LIME_PROP_COMPANY_EMAIL: limePropCompanyEmail
  LIME_RATE_LIMIT_REQUESTS: string(limeRateLimitRequests)
  LIME_RATE_LIMIT_WINDOW_SECONDS: string(limeRateLimitWindowSeconds)
}

// GRAPH_CLIENTS with this app's identity filled in for managed-identity clients, and one Key Vault
// reference per client that authenticates with a secret (the default) or a certificate.
var resolvedGraphClients = toObject(items(graphClients), client => client.key, client => client.value.?credential == 'managed_identity' ? union({ managed_identity_client_id: identity.outputs.clientId }, client.value) : client.value)
var secretGraphClients = filter(items(graphClients), client => (client.value.?credential ?? 'secret') == 'secret')
var certificateGraphClients = filter(items(graphClients), client => client.value.?credential == 'certificate')
var graphSecretAppSettings = toObject(secretGraphClients, client => 'GRAPH_CLIENT_SECRET_${graphSettingSuffix(client.key)}', client => keyVaultReference(vault.outputs.uri, graphSecretName(client.key)))
var graphCertificateAppSettings = toObject(certificateGraphClients, client => 'GRAPH_CLIENT_CERT_${graphSettingSuffix(client.key)}', client => keyVaultReference(vault.outputs.uri, graphCertificateName(client.key)))
var graphAppSettings = {
  GRAPH_CLIENTS: string(resolvedGraphClients)
}

var secretAppSettings = {
  CLIENT_STATE_KEYS: keyVaultReference(vault.outputs.uri, secretNames.clientStateKeys)
  WEBHOOK_KEY: keyVaultReference(vault.outputs.uri, secretNames.webhookKey)
  LIME_CRM_API_KEY: crmBackend == 'lime' ? keyVaultReference(vault.outputs.uri, secretNames.limeCrmApiKey) : ''
  TRAML_API_KEY: empty(tramlBaseUrl) ? '' : keyVaultReference(vault.outputs.uri, secretNames.tramlApiKey)
}

module functionApp 'app/function-app.bicep' = {
  name: 'function-app'
  params: {
    name: functionAppName
    planName: names.plan
    location: location
    tags: appTags
    hostingPlan: hostingPlan
    premiumSku: premiumSku
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    alwaysReadyInstances: alwaysReadyInstances
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: names.deploymentContainer
    contentShareName: hostingPlan == 'premium' ? names.contentShare : ''
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    publicBaseUrl: publicBaseUrl
    appSettings: union(registryAppSettings, limeAppSettings, secretAppSettings, graphAppSettings, graphSecretAppSettings, graphCertificateAppSettings)
    contentShareConnectionReference: hostingPlan == 'premium' ? keyVaultReference(vault.outputs.uri, secretNames.storageContent) : ''
    additionalAppSettings: additionalAppSettings
    subnetId: vnetEnabled ? network.outputs.appSubnetId : subnetId
    privateNetworkOnly: vnetEnabled
    enableAuth: enableAuth
    authClientId: authClientId
  }
  // The host reaches Storage, Key Vault and Application Insights with the identity as soon as it
  // starts: grant the roles first, and with vnetEnabled, let the private endpoints exist.
  dependsOn: [
    rbac
    privateEndpoints
  ]
}

// ---------------------------------------------------------------------------------------------
// Outputs (no secrets: the ?code= key is appended by the app from WEBHOOK_KEY)
// ---------------------------------------------------------------------------------------------

@description('Function app name, for `func azure functionapp publish <name> --python`.')
output functionAppName string = functionApp.outputs.name

@description('Graph notificationUrl (the app appends ?code=).')
output notificationUrl string = '${functionApp.outputs.publicBaseUrl}/api/notifications'

@description('Graph lifecycleNotificationUrl (the app appends ?code=).')
output lifecycleUrl string = '${functionApp.outputs.publicBaseUrl}/api/lifecycle'

@description('Base URL of the management API.')
output manageUrl string = '${functionApp.outputs.publicBaseUrl}/api/manage'

@description('Client id of the managed identity: managed_identity_client_id in GRAPH_CLIENTS.')
output identityClientId string = identity.outputs.clientId

@description('Object (principal) id of the managed identity: the subject of the federated credential on the Graph app registration.')
output identityPrincipalId string = identity.outputs.principalId

@description('Tenant of the deployment: the issuer of that federated credential is <login endpoint>/<tenant>/v2.0.')
output tenantId string = tenant().tenantId

@description('Key Vault name, for `az keyvault secret set --vault-name`.')
output vaultName string = vault.outputs.name

@description('Storage account name.')
output storageAccountName string = storage.outputs.name

@description('Maximum instance count in effect (derived unless overridden).')
output maximumInstanceCount int = maximumInstanceCount

@description('vnetEnabled: the fixed public address the app\'s outbound traffic leaves from (NAT gateway); empty otherwise.')
output outboundIpAddress string = vnetEnabled ? network.outputs.outboundIpAddress : ''

// The same values under the names azd and its hooks use (azd stores outputs in the environment).
@description('azd: the function app to deploy to and register the webhook key on.')
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name

@description('azd: the resource group of the deployment.')
output AZURE_RESOURCE_GROUP string = resourceGroup().name
