"""`edgemtl toolchain`: each name's plan of commands (printed, never run here), the one-line errors, what install skips,
and that the Makefile, .ci/run and doctor all go through it."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from edgemtl import toolchain
from test_cli import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
APT = {"riscv": ["gcc-riscv64-unknown-elf", "picolibc-riscv64-unknown-elf", "qemu-system-misc"],
       "aarch64": ["g++-aarch64-linux-gnu", "qemu-user-static"], "tcl": ["tcl"], "g++": ["g++"],
       "chromium": ["chromium"], "emulated-arm64": ["qemu-user-static", "g++-aarch64-linux-gnu"]}


@pytest.fixture
def nothing_runs(monkeypatch):
    """Any subprocess a test did not mean to start fails it."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"ran {args[0]!r}")
    monkeypatch.setattr(toolchain.subprocess, "run", refuse)


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr(toolchain.os, "geteuid", lambda: 0)


def printed_plan(capsys, *names: str) -> list[list[str]]:
    code, out, err = run_cli(capsys, "toolchain", "install", *names, "--print")
    assert code == 0, err
    return [shlex.split(line) for line in out.splitlines()]


def test_every_name_has_a_plan_or_packages():
    assert set(APT) | {"finn", "deeploy", "tvm"} == set(toolchain.TOOLCHAINS)
    for name, tool in toolchain.TOOLCHAINS.items():
        assert tool.apt or tool.commands(), name
        assert tool.install_command() == f"edgemtl toolchain install {name}"


@pytest.mark.parametrize("name", sorted(APT))
def test_apt_plans(capsys, nothing_runs, as_root, name):
    commands = printed_plan(capsys, name)
    assert commands[:2] == [["apt-get", "update", "-qq"],
                            ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
                             "--no-install-recommends", *APT[name]]]
    if name == "emulated-arm64":  # then the board's build script, on the board folder the profiler looks in
        from edgemtl.profile.emulated_board import default_board_path

        env, host_python, bash, script, board = commands[2]
        assert (env, bash) == ("env", "bash") and host_python.startswith("HOST_PYTHON=")
        assert Path(script).is_file() and script.endswith("arm64/make_emulated_board.sh")
        assert board == str(default_board_path()) and len(commands) == 3
    else:
        assert len(commands) == 2


def test_several_names_share_one_apt_call_without_repeating_a_package(capsys, nothing_runs, as_root):
    commands = printed_plan(capsys, "aarch64", "emulated-arm64", "riscv", "aarch64")
    installs = [c for c in commands if "install" in c and "apt-get" in c]
    assert len(installs) == 1 and installs[0][-5:] == ["g++-aarch64-linux-gnu", "qemu-user-static",
                                                       "gcc-riscv64-unknown-elf", "picolibc-riscv64-unknown-elf",
                                                       "qemu-system-misc"]
    assert sum(1 for c in commands if "make_emulated_board.sh" in " ".join(c)) == 1


@pytest.mark.parametrize(("name", "package", "check"), [
    ("finn", "finn-plus==1.6.1", "import torch, finn.builder.build_dataflow_config"),
    ("deeploy", "deeploy-pulp==0.2.1", "import numpy, Deeploy.Targets.PULPOpen.Platform"),
])
def test_venv_plans(capsys, nothing_runs, name, package, check):
    venv = toolchain.TOOLCHAINS[name].venv()
    commands = printed_plan(capsys, name)
    assert commands[0][1:] == ["-m", "venv", str(venv)]
    python = str(venv / "bin" / "python")
    assert all(c[0] == python for c in commands[1:])
    assert commands[1][1:] == ["-m", "pip", "install", "-q", "--upgrade", "pip"]
    assert any(package in c for c in commands) and commands[-1][-2:-1] == ["-c"] and check in commands[-1][-1]
    if name == "finn":  # torch stays the CPU build: asked for first and again with FINN's pins
        assert commands[2][-1] == "torch==2.13.0" and "--no-deps" in commands[3] and "torch==2.13.0" in commands[4]


def test_tvm_plan_installs_the_tvm_extra_from_edgemtls_metadata(capsys, nothing_runs):
    (command,) = printed_plan(capsys, "tvm")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert command[1:5] == ["-m", "pip", "install", "-q"] and command[5:]
    assert all(f'"{requirement}"' in pyproject for requirement in command[5:]), command
    assert any(r.startswith("apache-tvm==") for r in command[5:])


def test_an_unknown_name_is_one_line(capsys, nothing_runs):
    code, out, err = run_cli(capsys, "toolchain", "install", "riscv", "vivado", "--print")
    assert_one_line_error(code, err, "unknown toolchain 'vivado'; known: riscv, aarch64")
    assert out == ""


def test_apt_without_root_or_sudo_is_one_line_naming_the_exact_command(capsys, monkeypatch, nothing_runs):
    monkeypatch.setattr(toolchain.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(toolchain, "_packages_missing", lambda packages: packages)
    real_which = toolchain.shutil.which
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None if name == "sudo" else real_which(name) or name)
    code, _, err = run_cli(capsys, "toolchain", "install", "tcl")
    assert_one_line_error(code, err, "needs root and there is no sudo: as root, run `apt-get update -qq && env "
                                     "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tcl`")


def test_without_root_apt_goes_through_sudo(capsys, monkeypatch, nothing_runs):
    monkeypatch.setattr(toolchain.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert [c[0] for c in printed_plan(capsys, "tcl")] == ["sudo", "sudo"]


def test_install_runs_a_venv_plan_once_then_skips_it_while_its_stamp_matches(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(toolchain.subprocess, "run", lambda command, **kw: ran.append(command) or
                        subprocess.CompletedProcess(command, 0))
    plan = [("make-venv", str(tmp_path)), ("pip", "install", "x==1")]
    tool = toolchain.Toolchain("x", "a test venv", lambda: None, commands=lambda: list(plan), venv=lambda: tmp_path)
    assert toolchain.install([tool]) == ["x: present"] and ran == plan
    assert toolchain.install([tool]) == [f"x: up to date ({tmp_path})"] and len(ran) == 2
    plan.append(("pip", "install", "y==2"))  # a changed plan rebuilds
    assert toolchain.install([tool]) == ["x: present"] and len(ran) == 5
    assert "+ make-venv" in capsys.readouterr().err  # each command is echoed before it runs


def test_a_failing_command_or_a_check_still_failing_is_one_error(monkeypatch):
    monkeypatch.setattr(toolchain.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 1))
    tool = toolchain.Toolchain("x", "x", lambda: None, commands=lambda: [("false",)])
    with pytest.raises(toolchain.EdgemtlError, match="`false` failed with exit status 1"):
        toolchain.install([tool])
    monkeypatch.setattr(toolchain.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0))
    tool = toolchain.Toolchain("x", "x", lambda: "x.so not found", commands=lambda: [("true",)])
    with pytest.raises(toolchain.EdgemtlError, match="x: installed, yet still missing: x.so not found"):
        toolchain.install([tool])


def test_list_shows_each_present_or_missing_with_its_install_command(capsys):
    code, out, _ = run_cli(capsys, "toolchain", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and set(rows) == set(toolchain.TOOLCHAINS)
    for name, row in rows.items():
        assert row["install"] == f"edgemtl toolchain install {name}"
        assert row["present"] is (row["why_missing"] is None)
    code, out, _ = run_cli(capsys, "toolchain", "list")
    assert code == 0 and "emulated-arm64" in out and "[tvm] extra" in out


def test_doctor_names_the_toolchain_command(capsys):
    code, out, _ = run_cli(capsys, "doctor", "--json")
    rows = json.loads(out)
    from edgemtl.doctor import ENTRIES

    installable = {entry.name: entry.installer for entry in ENTRIES if entry.installer}
    assert {"finn", "deeploy", "riscv", "aarch64", "tcl", "emulated-arm64", "tvm"} <= set(installable.values())
    for row in rows:
        if row["add"] is not None and row["toolchain"] in installable:
            assert row["add"] == f"edgemtl toolchain install {installable[row['toolchain']]}"


def test_the_makefile_and_ci_install_through_the_command():
    """One source of truth: the Makefile targets and .ci/run call `edgemtl toolchain install`, holding no pins."""
    makefile, ci = (REPO / "Makefile").read_text(), (REPO / ".ci" / "run").read_text()
    for name in ("finn", "deeploy", "emulated-arm64"):
        assert f"toolchain install {name}" in makefile
    assert "edgemtl toolchain install riscv aarch64 tcl chromium" in ci
    for text in (makefile, ci):
        assert "finn-plus==" not in text and "deeploy-pulp==" not in text and "apt-get install" not in text
