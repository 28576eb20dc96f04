// The private network of vnetEnabled: a VNet with two subnets and a NAT gateway.
//
// - `app`: the function app's VNet integration (delegated to Microsoft.App/environments on Flex,
//   Microsoft.Web/serverFarms on Elastic Premium). Outbound traffic of the app (Storage and Key
//   Vault through their private endpoints; Graph, Entra, Lime CRM, TRAML and Application
//   Insights on the internet) leaves through it.
// - `private-endpoints`: the private endpoints of Storage (blob, queue, table, and file on
//   Premium) and Key Vault (private-endpoints.bicep).
// - A NAT gateway with one static public IP gives the app subnet its internet access explicitly
//   (new subnets get no default outbound access) and a fixed source address, which an on-premise
//   Lime CRM can allow.
//
// Inbound traffic is unchanged: Graph still reaches the webhook on the app's public host name.

@description('VNet name.')
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('"flex" or "premium": decides the app subnet\'s delegation.')
@allowed([
  'flex'
  'premium'
])
param hostingPlan string = 'flex'

@description('Address space of the VNet.')
param addressPrefix string = '10.40.0.0/16'

@description('Address range of the app subnet (VNet integration; Flex needs at least a /27).')
param appSubnetPrefix string = '10.40.1.0/24'

@description('Address range of the private endpoint subnet.')
param privateEndpointSubnetPrefix string = '10.40.2.0/24'

var appSubnetName = 'app'
var privateEndpointSubnetName = 'private-endpoints'

resource natIp 'Microsoft.Network/publicIPAddresses@2023-11-01' = {
  name: '${name}-nat-ip'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
  }
}

resource nat 'Microsoft.Network/natGateways@2023-11-01' = {
  name: '${name}-nat'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    idleTimeoutInMinutes: 4
    publicIpAddresses: [
      {
        id: natIp.id
      }
    ]
  }
}

// No inbound rule: the app subnet only carries the app's outbound traffic and the private
// endpoint subnet only answers the VNet (the default rules allow VNet-to-VNet, deny internet).
resource nsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: '${name}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  // checkov:skip=CKV_AZURE_182: the VNet uses Azure-provided DNS on purpose: it resolves the private DNS zones linked in private-endpoints.bicep (privatelink.*), which custom DNS servers would need forwarders for.
  // checkov:skip=CKV_AZURE_183: Azure-provided DNS (see CKV_AZURE_182) rather than DNS servers inside the VNet.
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          defaultOutboundAccess: false
          natGateway: {
            id: nat.id
          }
          networkSecurityGroup: {
            id: nsg.id
          }
          delegations: [
            {
              name: 'app'
              properties: {
                serviceName: hostingPlan == 'flex' ? 'Microsoft.App/environments' : 'Microsoft.Web/serverFarms'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          defaultOutboundAccess: false
          privateEndpointNetworkPolicies: 'Enabled'
          networkSecurityGroup: {
            id: nsg.id
          }
        }
      }
    ]
  }
}

output id string = vnet.id
output appSubnetId string = '${vnet.id}/subnets/${appSubnetName}'
output privateEndpointSubnetId string = '${vnet.id}/subnets/${privateEndpointSubnetName}'
@description('The fixed public address of the app\'s outbound traffic (allow it at an on-premise CRM).')
output outboundIpAddress string = natIp.properties.ipAddress
