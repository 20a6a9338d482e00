# Routers and splitters need an L7 protocol.
Kind     = "service-defaults"
Name     = "api"
Protocol = "http"
