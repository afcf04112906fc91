"""Which storage paths count as remote (no Ray, no network)."""

import pytest

from hpo import storage


@pytest.mark.parametrize("path,remote", [
    ("s3://bucket/x", True), ("gs://bucket", True), ("/mnt/efs/x", False), ("relative", False),
    ("file:///tmp/x", False), ("~/ray_results", False)])
def test_is_remote(path, remote):
    assert storage.is_remote(path) is remote
