# Route web's traffic by path and header. Needs web (and api, web-canary) to speak HTTP:
#   flotilla config write examples/config/{web,api,web-canary}-defaults.hcl first.
Kind = "service-router"
Name = "web"

Routes = [
  {
    # Canary testers opt in with a header.
    Match {
      HTTP {
        Header = [
          {
            Name  = "x-canary"
            Exact = "true"
          },
        ]
      }
    }
    Destination {
      Service = "web-canary"
    }
  },
  {
    Match {
      HTTP {
        PathPrefix = "/api"
      }
    }
    Destination {
      Service            = "api"
      RequestTimeout     = "15s"
      NumRetries         = 2
      RetryOnStatusCodes = [503]
    }
  },
]
