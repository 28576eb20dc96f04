// The app's one user-assigned managed identity. It is created before the function app, so role
// assignments and Key Vault access exist before the first start (a system-assigned identity
// would only exist once the site does), and it can be trusted as a federated credential by the
// Graph app registration.

@description('Name of the user-assigned managed identity.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to the identity.')
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
