# The subsets web-splitter.json splits between, told apart by the instances' tags.
Kind          = "service-resolver"
Name          = "web"
DefaultSubset = "v1"

Subsets = {
  v1 = { Filter = "Service.Tags contains \"v1\"" }
  v2 = { Filter = "Service.Tags contains \"v2\"" }
}
