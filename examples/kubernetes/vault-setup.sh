#!/usr/bin/env bash
# The Vault side of examples/kubernetes: Kubernetes auth for the orders-api
# service account, and the policy dbproxy's token needs (docs/vault-setup.md).
# Run once with a Vault admin token; the database role orders-app is set up as
# in docs/vault-setup.md.
set -euo pipefail

vault auth enable kubernetes 2>/dev/null || true
# Vault running in the cluster: it reads the API server address and CA from its own pod.
vault write auth/kubernetes/config kubernetes_host="https://kubernetes.default.svc"

vault policy write dbproxy-orders - <<'HCL'
path "database/creds/orders-app" { capabilities = ["read"] }
path "database/roles/orders-app" { capabilities = ["read"] }
path "sys/leases/renew"          { capabilities = ["update"] }
path "sys/leases/revoke"         { capabilities = ["update"] }
path "auth/token/renew-self"     { capabilities = ["update"] }
path "auth/token/lookup-self"    { capabilities = ["read"] }
HCL

# audience must match the projected token's (deployment.yaml). Leases die with
# the token that created them, so dbproxy logs in again before its token's max
# TTL; a token_max_ttl longer than the role's max_ttl saves rotations.
vault write auth/kubernetes/role/orders-api \
    bound_service_account_names=orders-api \
    bound_service_account_namespaces=orders \
    audience=vault \
    token_policies=dbproxy-orders \
    token_ttl=1h token_max_ttl=48h
