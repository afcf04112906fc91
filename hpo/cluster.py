"""`python -m hpo.cluster validate FILE.yaml`: check a Ray cluster config offline.

Runs Ray's own cluster-launcher schema check (the one `ray up` runs, without touching any
cloud) and the project checks of `hpo.cluster_checks`. Prints one sentence per problem and
exits 2, or prints a short summary and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Any

import ray

from hpo import cluster_checks
from zsl.errors import EXIT_USER_ERROR, UserError
from zsl.userfiles import read_yaml_file


def load_config(path: Path) -> tuple[str, dict[str, Any]]:
    """Read a cluster YAML file with safe_load; returns (raw text, parsed mapping)."""
    text, config = read_yaml_file(path, str(path))
    if not isinstance(config, dict):
        raise UserError(f"{path}: is not a mapping of cluster settings; "
                        "start from cluster/gpu.yaml or cluster/local.yaml")
    return text, config


def ray_schema_problem(config: dict[str, Any]) -> str | None:
    """Ray's offline check (fill defaults, validate against ray-schema.json); a sentence or None."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    import jsonschema

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            validate_config(prepare_config(config))
    except jsonschema.ValidationError as err:
        field = ".".join(str(p) for p in err.absolute_path) or "top level"
        first_line = err.message.splitlines()[0]
        return (f"Ray's cluster schema rejects {field} ({first_line}); fix or remove that "
                "field (see Ray's cluster-launcher YAML reference)")
    except (Exception, SystemExit) as err:  # Ray aborts with assorted types (and SystemExit)
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"Ray cannot prepare this config ({detail}); fix the field it names"
    return None


def summary(path: Path, config: dict[str, Any]) -> str:
    """One short OK block: provider, node types with their resources, image, storage."""
    provider = config.get("provider", {})
    lines = [f"{path}: OK (Ray {ray.__version__} schema and project checks)",
             f"  provider: {provider.get('type')} {provider.get('region', provider.get('head_ip', ''))}".rstrip()]
    for name, node_type in (config.get("available_node_types") or {}).items():
        instance = (node_type.get("node_config") or {}).get("InstanceType", "")
        market = "spot" if (node_type.get("node_config") or {}).get("InstanceMarketOptions") else ""
        bounds = ("head" if name == config.get("head_node_type")
                  else f"{node_type.get('min_workers', 0)}-{node_type.get('max_workers', '?')} nodes")
        parts = [instance, market, str(node_type.get("resources", {})), bounds]
        lines.append(f"  {name}: " + " ".join(p for p in parts if p))
    if provider.get("type") == "local":
        lines.append(f"  workers: {len(provider.get('worker_ips') or [])} hosts, resources auto-detected")
    image = (config.get("docker") or {}).get("image")
    if image:
        lines.append(f"  image: {image}")
    for storage in cluster_checks.storage_paths(config):
        note = "  (placeholder bucket: edit before `ray up`)" if "your-bucket" in storage else ""
        lines.append(f"  storage: {storage}{note}")
    return "\n".join(lines)


def validate(path: Path) -> tuple[list[str], str]:
    """All problems of a cluster config (sentences prefixed with the file), and its summary."""
    text, config = load_config(path)
    shapes = cluster_checks.check_shapes(config)
    if shapes:  # the other checks (Ray's too) would stumble over these fields
        return [f"{path}: {p}." for p in shapes], ""
    schema = ray_schema_problem(config)
    problems = ([schema] if schema else []) + cluster_checks.project_problems(text, config)
    return [f"{path}: {p}." for p in problems], summary(path, config)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 OK, 2 problems found)."""
    parser = argparse.ArgumentParser(prog="python -m hpo.cluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="check a Ray cluster config offline")
    check.add_argument("config", type=Path, help="cluster YAML, e.g. cluster/gpu.yaml")
    args = parser.parse_args(argv)
    try:
        problems, ok_summary = validate(args.config)
    except UserError as err:
        print(err, file=sys.stderr)
        return EXIT_USER_ERROR
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_USER_ERROR
    print(ok_summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
