"""CI runs exactly the README's install command and exactly its test command (.ci/run reads them from README.md);
the install command must install everything the test command needs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _command(section: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_command.py"), section], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_ci_runs_the_readmes_two_commands_and_nothing_more():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    code = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    commands = [line for line in code if "pip " in line or line.startswith(("tox", "pytest"))]
    assert commands == [], commands  # no install or test line of its own: only the README's, through eval
    assert 'eval "$install"' in script and 'eval "$tests"' in script
    assert script.index('eval "$install"') < script.index('eval "$tests"')


def test_the_install_command_installs_what_the_test_command_needs():
    install, tests = _command("Install"), _command("Tests")
    assert tests.split()[0] == "tox"
    words = shlex.split(install)
    assert words[:2] == ["pip", "install"] and "-e" in words
    target = words[words.index("-e") + 1]
    extras = re.fullmatch(r"\.\[([\w,]+)\]", target)
    assert extras, f"the install command installs no extra, so not {tests.split()[0]}: {install}"
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = {
        re.split(r"[<>=!~ ]", dep)[0].lower()
        for extra in extras.group(1).split(",")
        for dep in project["optional-dependencies"][extra]
    }
    assert "tox" in needed


@pytest.mark.parametrize("block,why", [("no block", "no ```bash block"), ("two", "must hold one command")])
def test_a_readme_block_that_is_not_one_command_stops_ci(tmp_path, block, why):
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "readme_command.py").write_text((ROOT / ".ci" / "readme_command.py").read_text())
    body = (
        "## Install\n\ntext\n" if block == "no block" else "## Install\n\n```bash\npip install a\npip install b\n```\n"
    )
    (tmp_path / "README.md").write_text(body)
    out = subprocess.run(
        [sys.executable, str(tmp_path / ".ci" / "readme_command.py"), "Install"], capture_output=True, text=True
    )
    assert out.returncode != 0 and why in out.stderr
