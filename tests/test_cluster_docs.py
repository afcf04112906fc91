"""cluster/README.md only uses flags that hpo/search.py really has."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def documented_search_flags() -> set[str]:
    """Every --flag written after `hpo/search.py` in the cluster README's commands."""
    text = (ROOT / "cluster" / "README.md").read_text().replace("\\\n", " ")
    flags = set()
    for command in re.findall(r"hpo/search\.py([^\n`']*)", text):
        flags |= set(re.findall(r"(--[a-z][a-z-]*)", command))
    return flags


def test_readme_search_flags_exist():
    flags = documented_search_flags()
    assert {"--address", "--storage-path", "--resume", "--gpus-per-trial", "--name"} <= flags
    helptext = subprocess.run([sys.executable, str(ROOT / "hpo" / "search.py"), "--help"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    assert {f for f in flags if f not in helptext} == set()
