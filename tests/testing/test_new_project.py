"""A project made by ``stepstone init`` passes its own test in a fresh venv, with the two commands its README
gives (``pip install -e '.[test]'``, ``pytest``), stepstone coming from a wheel built from this checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import stepstone

pytestmark = pytest.mark.slow
CHECKOUT = Path(stepstone.__file__).resolve().parent.parent
LOCAL_INDEX = Path("/opt/pypi/simple")  # this machine kind's local PyPI mirror: no network when it is there


def run(args: list[str] | str, *, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, shell=isinstance(args, str)
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def readme_commands(readme: str) -> list[str]:
    """The README's bash block, without comments: the commands a new user types."""
    block = re.search(r"```bash\n(.*?)```", readme, re.S)
    assert block is not None, readme
    return [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.mark.timeout(600)
def test_a_new_project_passes_its_own_test_in_a_fresh_venv(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEPSTONE_", "PYTHON", "VIRTUAL_ENV"))}
    wheels = tmp_path / "wheels"
    # The wheel of this checkout, built offline with the dev venv's hatchling.
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(CHECKOUT)], cwd=tmp_path, env=env)  # fmt: skip
    run(
        [sys.executable, "-m", "stepstone.cli", "init", "starter"],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(CHECKOUT)},
    )
    root = tmp_path / "starter"
    commands = readme_commands((root / "README.md").read_text())
    install, test = commands[0], commands[1]
    assert (install, test) == ("pip install -e '.[test]'", "pytest")
    run([sys.executable, "-m", "venv", str(tmp_path / "venv")], cwd=tmp_path, env=env)
    venv_env = {**env, "PATH": f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{env['PATH']}"}
    venv_env["PIP_FIND_LINKS"] = " ".join([str(wheels), *env.get("PIP_FIND_LINKS", "").split()])
    if LOCAL_INDEX.is_dir():
        venv_env["PIP_INDEX_URL"] = LOCAL_INDEX.as_uri()
    run(install, cwd=root, env=venv_env)
    where = run(["python", "-c", "import stepstone; print(stepstone.__file__)"], cwd=tmp_path, env=venv_env)
    assert where.startswith(str(tmp_path / "venv")), where  # the wheel's stepstone, not this checkout's
    out = run(test, cwd=root, env=venv_env)
    assert re.search(r"\b2 passed\b", out), out
    assert re.search(r"^plugins: .*\bstepstone-", out, re.M), out  # loaded by its pytest11 entry point
