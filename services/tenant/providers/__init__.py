"""Provider credentials: the upstream accounts the gateway calls, secrets sealed at rest."""
