# The example job: three instances of the bundled demo workload behind the mesh.
# Each answers with its allocation id and node, so balancing is visible:
#   flotilla dev examples/hello.hcl
#   curl http://127.0.0.1:8080/
job "hello" {
  datacenters = ["*"]
  type        = "service"

  group "web" {
    count = 3

    network {
      port "http" {}
    }

    service {
      name = "hello"
      port = "http"
      tags = ["urlprefix-/"]

      check {
        type     = "http"
        path     = "/health"
        interval = "2s"
        timeout  = "1s"
      }
    }

    task "server" {
      driver = "raw_exec"

      config {
        # `flotilla` resolves to the agent's own binary (its directory is searched first).
        command = "flotilla"
        args    = ["demo-app", "--listen", "${NOMAD_ADDR_http}", "--node", "${node.unique.name}"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
