"""The search spaces (one YAML file per space, see README.md here), installed with the package as data."""
