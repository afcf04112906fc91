"""Project checks on a Ray cluster-launcher config, beyond Ray's own schema.

Each check takes the raw YAML text and/or the parsed config (a dict as written by the user,
before Ray fills in defaults) and returns a list of problems; each problem is one sentence
naming what is wrong and how to fix it (the caller prefixes the file name).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from typing import Any, Iterable

import ray

# Ports that must never be reachable from the whole internet: dashboard/jobs API (arbitrary
# code execution), GCS, Ray client server.
PRIVATE_PORTS = {8265: "dashboard", 6379: "GCS", 10001: "Ray client"}
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}

# EC2 families with GPUs (g4dn, g5, g6, g6e, p3, p4d, p5, ...).
GPU_INSTANCE_RE = re.compile(r"^(g\d|p\d)[a-z0-9-]*\.", re.IGNORECASE)

CLOUD_FIX = ("let nodes authenticate through their IAM instance profile (AWS) or your local credential files")
GITHUB_FIX = ("revoke it on GitHub, then give nodes access through a deploy key or a credential file in "
              "file_mounts (kept out of git)")
CREDENTIAL_PATTERNS = [  # (pattern, what it is, how to do without it)
    (re.compile(r"aws_access_key_id", re.IGNORECASE), "an aws_access_key_id", CLOUD_FIX),
    (re.compile(r"aws_secret_access_key", re.IGNORECASE), "an aws_secret_access_key", CLOUD_FIX),
    (re.compile(r"aws_session_token", re.IGNORECASE), "an aws_session_token", CLOUD_FIX),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id (AKIA.../ASIA...)", CLOUD_FIX),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key", CLOUD_FIX),
    (re.compile(r"RAY_AUTH_TOKEN\s*[=:]\s*\S", re.IGNORECASE), "a Ray auth token", CLOUD_FIX),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), "a GitHub token (ghp_/gho_/ghu_/ghs_/ghr_...)", GITHUB_FIX),
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), "a GitHub fine-grained token (github_pat_...)", GITHUB_FIX),
]

# RAY_AUTH_MODE=<value>, with the quotes or escaped quotes a shell line may put around the value.
AUTH_MODE_RE = re.compile(r"RAY_AUTH_MODE\s*=\s*[\\'\"]*([^\s\\'\";|&)]*)")
DASHBOARD_HOST_RE = re.compile(r"--dashboard-host(?:\s*=\s*|\s+)[\\'\"]*([^\s\\'\";|&)]+)")
STORAGE_FLAG_RE = re.compile(r"(?:--storage-path[ =]|ZSL_HPO_STORAGE_PATH=)['\"]?([^\s'\";|&)]+)")
SHARED_MOUNT_RE = re.compile(r"mount\b[^;&|]*?-t\s+(?:nfs4?|efs|lustre|cifs|glusterfs)\b[^;&|]*?\s(/[^\s;&|)]+)")
NODE_LOCAL_PREFIXES = ("/tmp", "/var/tmp", "/dev/shm", "~", "$HOME", "${HOME}", "/root", "/home")


RANGE_FIELDS = {"IpRanges": "CidrIp", "Ipv6Ranges": "CidrIpv6"}  # an ingress rule's address lists and their key
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
KIND_NAMES = {dict: "a mapping", list: "a list", str: "text", int: "a whole number"}


def _described(value: Any) -> str:
    if value is None:
        return "empty"
    kind = next((name for kind, name in KIND_NAMES.items() if isinstance(value, kind) and not isinstance(value, bool)),
                f"a {type(value).__name__}")
    return f"{kind} ({value!r})" if isinstance(value, (str, int, float, bool)) else kind


def check_shapes(config: dict[str, Any]) -> list[str]:
    """The fields the project checks read have the types of cluster/gpu.yaml (a string where a mapping belongs,
    a port written as text, an address list that is not a list ...); the other checks run only when this finds
    nothing."""
    problems: list[str] = []

    def expect(value: Any, kind: type, where: str, example: str) -> bool:
        if isinstance(value, kind) and not isinstance(value, bool):
            return True
        problems.append(f"{where} is {_described(value)}, not {KIND_NAMES[kind]}; write it {example}")
        return False

    provider = config.get("provider", {})
    if expect(provider, dict, "provider", "as a mapping like cluster/gpu.yaml's (type: aws, region: ...)"):
        group = provider.get("security_group", {})
        if expect(group, dict, "provider.security_group", "as a mapping with GroupName and IpPermissions"):
            rules = group.get("IpPermissions", [])
            if expect(rules, list, "provider.security_group.IpPermissions", "as a list of rules"):
                for i, rule in enumerate(rules):
                    _check_rule(rule, f"provider.security_group.IpPermissions[{i}]", expect, problems)
    types = config.get("available_node_types", {})
    if expect(types, dict, "available_node_types", "as a mapping of node type name to its settings"):
        for name, node_type in types.items():
            where = f"available_node_types.{name}"
            if expect(node_type, dict, where, "as a mapping with node_config, resources, min/max_workers"):
                for key in ("node_config", "resources", "docker"):
                    if key in node_type:
                        expect(node_type[key], dict, f"{where}.{key}", "as a mapping")
                if "worker_setup_commands" in node_type:
                    _check_commands(node_type["worker_setup_commands"], f"{where}.worker_setup_commands", expect)
    if "docker" in config:
        expect(config["docker"], dict, "docker", "as a mapping with image and container_name")
    for key in COMMAND_KEYS:
        if key in config:
            _check_commands(config[key], key, expect)
    return problems


def _check_rule(rule: Any, where: str, expect, problems: list[str]) -> None:
    if not expect(rule, dict, where, "as a mapping with IpProtocol, FromPort, ToPort and IpRanges"):
        return
    for key in ("FromPort", "ToPort"):
        if key in rule:
            expect(rule[key], int, f"{where}.{key}", f"as a number ({key}: 8265)")
    for field, key in RANGE_FIELDS.items():
        entries = rule.get(field, [])
        if not expect(entries, list, f"{where}.{field}", f"as a list of {{{key}: ...}} entries"):
            continue
        for j, entry in enumerate(entries):
            at = f"{where}.{field}[{j}]"
            if expect(entry, dict, at, f"as a mapping {{{key}: 10.0.0.0/8}}") and expect(
                    entry.get(key), str, f"{at}.{key}", "as an address range such as 10.0.0.0/8"):
                try:
                    network = ipaddress.ip_network(entry[key], strict=False)
                except ValueError:
                    network = None
                if network is None or network.version != (4 if key == "CidrIp" else 6):
                    problems.append(f"{at}.{key} {entry[key]!r} is not an IPv{4 if key == 'CidrIp' else 6} address "
                                    "range; write it like " + ("10.0.0.0/8" if key == "CidrIp" else "fd00::/8"))


def _check_commands(commands: Any, where: str, expect) -> None:
    if expect(commands, list, where, "as a list of shell command lines"):
        for i, command in enumerate(commands):
            expect(command, str, f"{where}[{i}]", "as one shell command line (quote it)")


def all_commands(config: dict[str, Any]) -> list[str]:
    """Every shell command line of the config (setup, start and initialization lists)."""
    commands = [c for k in COMMAND_KEYS for c in (config.get(k) or []) if isinstance(c, str)]
    for node_type in (config.get("available_node_types") or {}).values():
        commands += [c for c in (node_type.get("worker_setup_commands") or []) if isinstance(c, str)]
    return commands


def check_credentials(text: str) -> list[str]:
    """Secrets pasted into the file (they would be copied to every node and into git)."""
    return [f"contains {what}; remove it and {fix}" for pattern, what, fix in CREDENTIAL_PATTERNS if pattern.search(text)]


def _covers(rule: dict[str, Any], port: int) -> bool:
    """Whether an EC2 ingress rule covers a TCP port (protocol -1 means every port)."""
    if str(rule.get("IpProtocol", "")) == "-1":
        return True
    if str(rule.get("IpProtocol", "")).lower() not in ("tcp", "6"):
        return False
    low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
    return isinstance(low, int) and isinstance(high, int) and low <= port <= high


def _public_networks(networks: list) -> list:
    """The networks, merged, that reach beyond one organisation's public block (wider than an IPv4 /24 or an
    IPv6 /48, not private, loopback or link-local): 0.0.0.0/1 plus 128.0.0.0/1 is the whole internet too."""
    out = []
    for version, widest in ((4, 24), (6, 48)):
        merged = ipaddress.collapse_addresses(n for n in networks if n.version == version)
        out += [n for n in merged if n.prefixlen < widest and not (n.is_private or n.is_loopback or n.is_link_local)]
    return out


def check_security_group(config: dict[str, Any]) -> list[str]:
    """No inbound rules may open the dashboard, GCS or client port to the internet (or a wide part of it).

    Runs on a config that passed :func:`check_shapes`."""
    rules = ((config.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    problems = []
    for port, name in PRIVATE_PORTS.items():
        networks = [ipaddress.ip_network(r[key], strict=False) for rule in rules if _covers(rule, port)
                    for field, key in RANGE_FIELDS.items() for r in rule.get(field) or []]
        public = _public_networks(networks)
        if public:
            reach = ("the whole internet" if any(n.prefixlen == 0 for n in public)
                     else "the public internet (" + ", ".join(map(str, public)) + ")")
            problems.append(
                f"its security group opens the {name} port {port} to {reach}; "
                "remove that rule from provider.security_group.IpPermissions and reach the "
                "cluster through `ray dashboard`/SSH instead")
    return problems


def check_start_commands(config: dict[str, Any]) -> list[str]:
    """Token auth stays on and the dashboard binds to localhost."""
    problems = []
    starts = [c for k in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in (config.get(k) or []) if "ray start" in str(c)]
    text = "\n".join(all_commands(config))
    modes = sorted({m.group(1) for m in AUTH_MODE_RE.finditer(text) if m.group(1).lower() != "token"})
    if modes:
        problems.append(f"disables Ray token authentication (RAY_AUTH_MODE={modes[0] or '(empty)'}); "
                        "set RAY_AUTH_MODE=token in the start commands")
    elif starts and not all("RAY_AUTH_MODE=token" in c for c in starts):
        problems.append("starts Ray without token authentication; prefix every `ray start` in "
                        "head_start_ray_commands and worker_start_ray_commands with RAY_AUTH_MODE=token")
    hosts = [m.group(1) for m in DASHBOARD_HOST_RE.finditer(text)]
    if any(h in ("0.0.0.0", "::") for h in hosts):
        problems.append("binds the dashboard to every interface (--dashboard-host=0.0.0.0); use "
                        "--dashboard-host=127.0.0.1 and `ray dashboard` to tunnel to it")
    elif any(not _loopback(h) for h in hosts):
        host = next(h for h in hosts if not _loopback(h))
        problems.append(f"binds the dashboard to {host}, an address other machines can reach; use "
                        "--dashboard-host=127.0.0.1 and `ray dashboard` to tunnel to it")
    return problems


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or a shell variable: it may resolve to anything


def storage_paths(config: dict[str, Any]) -> list[str]:
    """Storage locations named in the commands (--storage-path or ZSL_HPO_STORAGE_PATH=)."""
    return [m.group(1) for c in all_commands(config) for m in STORAGE_FLAG_RE.finditer(c)]


def shared_mounts(config: dict[str, Any]) -> list[str]:
    """Mount points of network file systems that the commands mount on every node."""
    return [m.group(1).rstrip("/") for c in all_commands(config) for m in SHARED_MOUNT_RE.finditer(c)]


def storage_problem(path: str, mounts: Iterable[str] = ()) -> str | None:
    """Why `path` is not storage every node shares, or None when it is.

    Shared: s3:// or gs:// URIs, or an absolute path under a network mount in `mounts`.
    """
    if re.match(r"^(s3|gs)://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", path):
        return None
    if "://" in path:
        return (f"storage path {path} is not an s3:// or gs:// URI with a valid bucket name; "
                "use s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    if any(path == m or path.startswith(m + "/") for m in mounts):
        return None
    if path.startswith(NODE_LOCAL_PREFIXES) or not path.startswith("/"):
        return (f"storage path {path} is local to each node, so a trial restored on another "
                "node cannot find its checkpoints; use s3://BUCKET/PREFIX or a path under an "
                "NFS/EFS mount that the config's initialization_commands mount on every node")
    return (f"storage path {path} is not under a network file system mounted by this config; "
            "mount NFS/EFS there in initialization_commands (mount -t nfs4 ...) or use s3://BUCKET/PREFIX")


def check_storage(config: dict[str, Any]) -> list[str]:
    """The search's storage path is declared and shared by all nodes."""
    paths = storage_paths(config)
    if not paths:
        return ["names no storage path for the search; add a setup command that exports "
                "ZSL_HPO_STORAGE_PATH=s3://BUCKET/PREFIX (or a shared NFS/EFS path)"]
    mounts = shared_mounts(config)
    return [p for p in (storage_problem(path, mounts) for path in paths) if p]


def expected_image_prefix() -> str:
    """Tag prefix matching this machine's Ray and Python, e.g. '2.60.0-py311'."""
    return f"{ray.__version__}-py{sys.version_info.major}{sys.version_info.minor}"


def _image_for(config: dict[str, Any], node_type: str, is_head: bool) -> str | None:
    """The docker image a node type runs (node-type override, then head/worker, then image)."""
    docker = config.get("docker") or {}
    override = ((config.get("available_node_types") or {}).get(node_type) or {}).get("docker") or {}
    keys = ("head_image", "image") if is_head else ("worker_image", "image")
    for source in (override, docker):
        for key in keys:
            if source.get(key):
                return str(source[key])
    return None


def is_gpu_node_type(node_type: dict[str, Any]) -> bool:
    """Whether an AWS node type's instance type carries GPUs."""
    instance = str((node_type.get("node_config") or {}).get("InstanceType", ""))
    return bool(GPU_INSTANCE_RE.match(instance))


def check_images(config: dict[str, Any]) -> list[str]:
    """Every image's tag matches the local Ray and Python; GPU node types get a GPU image."""
    if not (config.get("docker") or {}) and not any(
            (t or {}).get("docker") for t in (config.get("available_node_types") or {}).values()):
        return []
    want = expected_image_prefix()
    head = config.get("head_node_type")
    problems = []
    for name, node_type in (config.get("available_node_types") or {"": {}}).items():
        image = _image_for(config, name, is_head=(name == head))
        if image is None:
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        if not tag.startswith(want):
            problems.append(f"docker image {image} does not match this machine's Ray "
                            f"{ray.__version__} and Python {sys.version_info.major}."
                            f"{sys.version_info.minor}; use a tag starting with {want}, e.g. "
                            f"rayproject/ray:{want}-gpu")
        elif is_gpu_node_type(node_type) and not re.search(r"-(gpu|cu\d+)", tag):
            problems.append(f"GPU node type {name} runs the CPU image {image}; use "
                            f"rayproject/ray:{want}-gpu")
    return sorted(set(problems))


def check_node_types(config: dict[str, Any]) -> list[str]:
    """Head advertises no CPUs; GPU types declare GPUs; S3 users have an instance profile."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    problems = []
    if head in types and (types[head].get("resources") or {}).get("CPU") != 0:
        problems.append(f"head node type {head} offers CPUs to trials; set its "
                        'resources to {"CPU": 0} so that trials run only on workers')
    uses_s3 = any(p.startswith("s3://") for p in storage_paths(config))
    for name, node_type in types.items():
        resources = node_type.get("resources") or {}
        if is_gpu_node_type(node_type) and not resources.get("GPU"):
            instance = node_type["node_config"]["InstanceType"]
            problems.append(f"GPU node type {name} ({instance}) declares no GPU in resources; "
                            f'add resources: {{"CPU": N, "GPU": M}} with its real counts so the '
                            "autoscaler can launch it for GPU trials")
        is_aws = (config.get("provider") or {}).get("type") == "aws"
        if (is_aws and uses_s3 and name != head
                and "IamInstanceProfile" not in (node_type.get("node_config") or {})):
            problems.append(f"worker node type {name} has no IamInstanceProfile, so its trials "
                            "cannot write checkpoints to S3; add node_config.IamInstanceProfile "
                            "with a profile allowed to write the bucket")
    return problems


def project_problems(text: str, config: dict[str, Any]) -> list[str]:
    """All project checks, in a stable order."""
    return (check_credentials(text) + check_security_group(config) + check_start_commands(config)
            + check_storage(config) + check_images(config) + check_node_types(config))
