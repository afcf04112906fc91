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
    assert code == 2 and err == [f"{missing}: cannot read the cluster config (No such file or directory); "
                                 "pass the path of an existing YAML file"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider: [unclosed\n")
    code, _, err = run_validate(bad, capsys)
    assert code == 2 and len(err) == 1 and "not valid YAML at line" in err[0]
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
