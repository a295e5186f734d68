"""How RunTrack is deployed: the images (`deploy/images/`, built without a Docker daemon or a registry),
the Helm chart (`deploy/helm/runtrack/`), and a real local Kubernetes cluster that runs it (`deploy/k8s/`)."""
