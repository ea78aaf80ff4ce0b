"""The command line shell: help, version, one-line errors with exit code 2."""
import subprocess
import sys

from bayesim import __version__
from bayesim.cli import main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("data", "devices", "train", "evaluate", "import-pyro", "run", "bench"):
        assert cmd in out


def test_version():
    r = subprocess.run([sys.executable, "-m", "bayesim", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"bayesim {__version__}"


def test_bad_flag_and_missing_file_exit_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bayesim", "run", "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "bayesim", "run", str(tmp_path / "missing.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"bayesim: error: {tmp_path / 'missing.yaml'}: file not found"]
