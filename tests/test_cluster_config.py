"""`python -m hpo.cluster validate`: the shipped configs pass, broken ones fail with one sentence each."""

import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from hpo import cluster_checks
from hpo.cluster import main

ROOT = Path(__file__).resolve().parents[1]
GPU_YAML = ROOT / "cluster" / "gpu.yaml"
LOCAL_YAML = ROOT / "cluster" / "local.yaml"


def run_validate(path, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr lines)."""
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def write_variant(tmp_path, edit, source=GPU_YAML):
    """Write a copy of a shipped config after `edit(config)` mutates it; returns its path."""
    config = yaml.safe_load(source.read_text())
    edit(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("path", [GPU_YAML, LOCAL_YAML], ids=["gpu", "local"])
def test_shipped_configs_pass(path, capsys):
    code, out, err = run_validate(path, capsys)
    assert (code, err) == (0, [])
    assert "OK" in out and "storage:" in out


def test_cli_subprocess_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "hpo.cluster", "validate", str(GPU_YAML)],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = write_variant(tmp_path, lambda c: c["docker"].update(image="rayproject/ray:2.9.0-py310-gpu"))
    res = subprocess.run([sys.executable, "-m", "hpo.cluster", "validate", str(bad)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        line for line in res.stderr.strip().splitlines() if line.startswith(str(bad))]


def set_storage(config, value):
    config["setup_commands"] = [c for c in config["setup_commands"] if "ZSL_HPO_STORAGE_PATH" not in c]
    config["setup_commands"].append(f"echo 'export ZSL_HPO_STORAGE_PATH={value}' >> ~/.bashrc")


def open_port(config, port, protocol="tcp"):
    config["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": protocol, "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})


def add_rule(port=8265, **fields):
    """An edit appending an ingress rule for ``port`` with ``fields`` (IpRanges, Ipv6Ranges, ports as given)."""
    return lambda c: c["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, **fields})


def head_start(command):
    return lambda c: c.update(head_start_ray_commands=["ray stop", command])


SAFE_START = "RAY_AUTH_MODE=token ray start --head --dashboard-host=127.0.0.1"


BROKEN = {
    # name: (edit, words the one failure sentence must contain)
    "schema_unknown_field": (lambda c: c.update(max_wrokers=3), ["schema", "max_wrokers"]),
    "schema_wrong_type": (lambda c: c.update(max_workers="ten"), ["schema", "max_workers"]),
    "old_ray_image": (lambda c: c["docker"].update(image="rayproject/ray:2.9.0-py311-gpu"),
                      ["2.9.0", ray.__version__, "2.60.0-py311"]),
    "wrong_python_image": (lambda c: c["docker"].update(image=f"rayproject/ray:{ray.__version__}-py39-gpu"),
                           ["Python", cluster_checks.expected_image_prefix()]),
    "cpu_image_on_gpu_nodes": (lambda c: c["docker"].update(image=f"rayproject/ray:{ray.__version__}-py311-cpu"),
                               ["CPU image", "-gpu"]),
    "tmp_storage": (lambda c: set_storage(c, "/tmp/zsl"), ["/tmp/zsl", "local to each node", "s3://"]),
    "home_storage": (lambda c: set_storage(c, "~/ray_results"), ["~/ray_results", "local to each node"]),
    "unmounted_storage": (lambda c: set_storage(c, "/data/zsl"), ["/data/zsl", "mount"]),
    "bad_bucket": (lambda c: set_storage(c, "s3://Bad_Bucket/x"), ["s3://Bad_Bucket/x", "bucket"]),
    "no_storage": (lambda c: set_storage(c, "") or c["setup_commands"].pop(), ["no storage path"]),
    "gpu_type_without_gpu": (lambda c: c["available_node_types"]["gpu_spot_1x"].update(resources={"CPU": 4}),
                             ["gpu_spot_1x", "g5.xlarge", "GPU"]),
    "head_runs_trials": (lambda c: c["available_node_types"]["head"].update(resources={}),
                         ["head", '"CPU": 0']),
    "worker_without_profile": (lambda c: c["available_node_types"]["gpu_ondemand_4x"]["node_config"]
                               .pop("IamInstanceProfile"), ["gpu_ondemand_4x", "IamInstanceProfile"]),
    "dashboard_port_open": (lambda c: open_port(c, 8265), ["dashboard", "8265"]),
    "gcs_port_open": (lambda c: open_port(c, 6379), ["GCS", "6379"]),
    "client_port_open": (lambda c: open_port(c, 10001), ["client", "10001"]),
    "auth_disabled": (lambda c: c.update(head_start_ray_commands=[
        "ray stop", "RAY_AUTH_MODE=disabled ray start --head --dashboard-host=127.0.0.1"]), ["RAY_AUTH_MODE"]),
    "auth_missing": (lambda c: c.update(worker_start_ray_commands=[
        "ray stop", "ray start --address=$RAY_HEAD_IP:6379"]), ["token"]),
    "dashboard_all_interfaces": (lambda c: c.update(head_start_ray_commands=[
        "RAY_AUTH_MODE=token ray start --head --dashboard-host=0.0.0.0"]), ["0.0.0.0", "127.0.0.1"]),
    "access_key_id": (lambda c: c["setup_commands"].append("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"),
                      ["AKIA"]),
    "secret_key": (lambda c: c["provider"].update(aws_secret_access_key="abc/def"),
                   ["aws_secret_access_key", "IAM"]),
    # issue 14: wrong types (were AttributeError tracebacks)
    "ip_ranges_as_text": (add_rule(IpRanges="0.0.0.0/0"), ["IpPermissions[1].IpRanges is text", "a list"]),
    "ip_ranges_of_text": (add_rule(IpRanges=["0.0.0.0/0"]), ["IpRanges[0] is text", "CidrIp"]),
    "node_types_as_list": (lambda c: c.update(available_node_types=["head"]),
                           ["available_node_types is a list", "a mapping"]),
    "node_type_empty": (lambda c: c["available_node_types"].update(gpu_spot_1x=None),
                        ["available_node_types.gpu_spot_1x is empty"]),
    "provider_as_text": (lambda c: c.update(provider="aws"), ["provider is text ('aws')", "a mapping"]),
    "provider_as_list": (lambda c: c.update(provider=["aws"]), ["provider is a list"]),
    # issue 14: open networks, ports as text, dashboard address, tokens, auth (were accepted)
    "ipv4_halves_open_dashboard": (add_rule(IpRanges=[{"CidrIp": "0.0.0.0/1"}, {"CidrIp": "128.0.0.0/1"}]),
                                   ["dashboard port 8265", "whole internet"]),
    "ipv6_everything_to_gcs": (add_rule(6379, Ipv6Ranges=[{"CidrIpv6": "::/0"}]), ["GCS port 6379", "whole internet"]),
    "port_as_text": (add_rule("8265", IpRanges=[{"CidrIp": "0.0.0.0/0"}]), ["FromPort is text ('8265')", "number"]),
    "dashboard_routable": (head_start("RAY_AUTH_MODE=token ray start --head --dashboard-host=203.0.113.7"),
                           ["203.0.113.7", "127.0.0.1"]),
    "github_classic_token": (lambda c: c["setup_commands"].append(f"git clone https://ghp_{'a1B2' * 9}@github.com/o/r"),
                             ["GitHub token", "revoke"]),
    "github_fine_grained_token": (lambda c: c["setup_commands"].append(f"export GH_TOKEN=github_pat_{'A1b2' * 20}"),
                                  ["github_pat_", "revoke"]),
    "auth_off_in_escaped_quotes": (lambda c: c["setup_commands"].append(
        'echo "export RAY_AUTH_MODE=\\"disabled\\"" >> ~/.bashrc'), ["RAY_AUTH_MODE=disabled"]),
    # own cases
    "ipv6_halves_open_client": (add_rule(10001, Ipv6Ranges=[{"CidrIpv6": "::/1"}, {"CidrIpv6": "8000::/1"}]),
                                ["client port 10001", "whole internet"]),
    "wide_public_range": (add_rule(6379, IpRanges=[{"CidrIp": "52.0.0.0/8"}]), ["GCS port 6379", "52.0.0.0/8"]),
    "cidr_not_a_network": (add_rule(IpRanges=[{"CidrIp": "everyone"}]), ["'everyone' is not an IPv4 address range"]),
    "security_group_as_text": (lambda c: c["provider"].update(security_group="open"),
                               ["provider.security_group is text"]),
    "setup_commands_as_text": (lambda c: c.update(setup_commands="pip install ."), ["setup_commands is text", "a list"]),
    "command_not_text": (lambda c: c["setup_commands"].append({"run": "x"}), ["setup_commands[3] is a mapping"]),
    "dashboard_private_address": (head_start("RAY_AUTH_MODE=token ray start --head --dashboard-host 10.0.0.5"),
                                  ["10.0.0.5", "other machines can reach"]),
    "dashboard_quoted_everywhere": (head_start('RAY_AUTH_MODE=token ray start --head --dashboard-host="0.0.0.0"'),
                                    ["every interface"]),
    "auth_off_in_bashrc": (lambda c: c["setup_commands"].append("echo 'export RAY_AUTH_MODE=disabled' >> ~/.bashrc"),
                           ["RAY_AUTH_MODE=disabled"]),
    "auth_off_upper_case": (head_start("RAY_AUTH_MODE=DISABLED ray start --head --dashboard-host=127.0.0.1"),
                            ["RAY_AUTH_MODE=DISABLED"]),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_config_fails_with_one_sentence(name, tmp_path, capsys):
    edit, words = BROKEN[name]
    path = write_variant(tmp_path, edit)
    code, out, err = run_validate(path, capsys)
    assert code == 2 and out == ""
    relevant = [line for line in err if all(w in line for w in words)]
    assert relevant, f"no failure mentions {words}: {err}"
    for line in err:
        assert line.startswith(f"{path}: ") and line.endswith(".") and "\n" not in line


@pytest.mark.parametrize("name,text,words", [
    ("non_utf8", GPU_YAML.read_bytes() + b"# caf\xe9\n", ["byte 0xe9", "UTF-8"]),
    ("alias_bomb", b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n".encode() for i in range(1, 9)), ["alias bomb"]),
    ("alias_cycle", b"provider: &p {type: aws, again: *p}\n", ["cycle"]),
])
def test_unusable_yaml_gives_one_sentence(name, text, words, tmp_path, capsys):
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text)
    code, out, err = run_validate(path, capsys)
    assert code == 2 and out == "" and len(err) == 1 and err[0].startswith(f"{path}: "), err
    assert all(w in err[0] for w in words), err


def test_safe_start_is_fine_and_loopback_dashboard_addresses_pass(tmp_path, capsys):
    for host in ("127.0.0.1", "localhost", "::1"):
        path = write_variant(tmp_path, head_start(SAFE_START.replace("127.0.0.1", host)))
        assert run_validate(path, capsys)[0] == 0, host


def test_all_ports_rule_counts_as_open(tmp_path, capsys):
    path = write_variant(tmp_path, lambda c: c["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}))
    code, _, err = run_validate(path, capsys)
    assert code == 2 and len(err) == 3  # dashboard, GCS and client ports each named once


def test_private_cidr_port_rule_is_fine(tmp_path, capsys):
    path = write_variant(tmp_path, lambda c: c["provider"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}))
    assert run_validate(path, capsys)[0] == 0


def test_local_config_needs_shared_mount(tmp_path, capsys):
    path = write_variant(tmp_path, lambda c: c.update(initialization_commands=[]), source=LOCAL_YAML)
    code, _, err = run_validate(path, capsys)
    assert code == 2 and any("/mnt/zsl-shared/zsl-hpo" in line and "mount" in line for line in err)


def test_local_config_schema_error(tmp_path, capsys):
    path = write_variant(tmp_path, lambda c: c["provider"].pop("head_ip"), source=LOCAL_YAML)
    code, _, err = run_validate(path, capsys)
    assert code == 2 and any("Ray" in line for line in err)


def test_unreadable_and_malformed_files(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    code, _, err = run_validate(missing, capsys)
    assert code == 2 and err == [f"{missing}: cannot read it (No such file or directory): "
                                 "pass the path of an existing YAML file."]
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider: [unclosed\n")
    code, _, err = run_validate(bad, capsys)
    assert code == 2 and len(err) == 1 and "not valid YAML near line 3" in err[0]
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    code, _, err = run_validate(unsafe, capsys)
    assert code == 2 and "not valid YAML" in err[0]  # safe_load refuses python tags


@pytest.mark.parametrize("path,shared", [
    ("s3://zsl-bucket/exp", True), ("gs://zsl-bucket", True), ("/mnt/efs/zsl", True),
    ("/mnt/efs", True), ("/mnt/efsx/zsl", False), ("/tmp/x", False), ("relative/dir", False),
    ("s3://ab/x", False), ("file:///tmp/x", False)])
def test_storage_problem(path, shared):
    assert (cluster_checks.storage_problem(path, mounts=["/mnt/efs"]) is None) == shared
