"""The command line shell: help, version, one-line errors with exit code 2."""
import subprocess
import sys

from bayesim import __version__
from bayesim.cli import main
from bayesim.errors import BayesimError


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


# ------------------------------------------------------------------ bad-input audit
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs" / "quickstart.yaml")
FAST = ["--no-progress", "--set", "samples=2", "--set", "data.limit=20", "--set", "data.embedded=true"]


@pytest.fixture
def no_run(monkeypatch):
    """Bad input must fail before the simulation: make run_experiment fail the test if it is reached."""
    import bayesim.experiment

    def boom(*a, **k):
        raise AssertionError("run_experiment was called; the bad input should have been refused before")
    monkeypatch.setattr(bayesim.experiment, "run_experiment", boom)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bayesim: error: "), err
    return err[0][len("bayesim: error: "):]


@pytest.mark.parametrize("text, expect", [
    ("name: a\nhardware:\n  bits: {w: 3}\n  strategy: jq\n  bits: {w: 4}\n",
     "{p}: hardware.bits: duplicate key at line 5 (first given at line 3)"),
    ("# nothing but a comment\n", "{p}: empty; expected a mapping with keys name, model, data, hardware, samples"),
    ("", "{p}: empty; expected a mapping with keys name"),
])
def test_duplicate_keys_and_empty_config_exit_2(tmp_path, capsys, no_run, text, expect):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert main(["run", str(p), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert _error(capsys).startswith(expect.format(p=p))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sets, expect", [
    (["hardware..bits.w=3"], "(--set): empty key segment in 'hardware..bits.w=3'"),
    (["hardware.bits.w"], "(--set): expected key.path=value, got 'hardware.bits.w'"),
    (["hardware.bits.adc=1"], "{c} (--set): hardware.bits.adc: 1 is out of range; allowed [2, 24]"),
    (["hardware.read_time_s=1e12"],
     "{c} (--set): hardware.read_time_s: 1000000000000.0 is out of range; allowed [0.0, 10000000000.0]"),
    (["foo.bar=1"], "{c} (--set): foo: unknown key; allowed: batch_size"),
    (["hardware.strategi=jq"], "{c} (--set): hardware.strategi: unknown key; allowed: bits"),
    (["model.path=/etc"], "{c} (--set): model.path: is used only with model.source checkpoint or pyro"),
    (["data.splits=[foo]"], "{c} (--set): data.splits[0]: 'foo' is not allowed; choose one of 'mnist'"),
    (["hardware.drift_compensation=yes"], "{c} (--set): hardware.drift_compensation: true (a bare "
                                          "yes/no/on/off/true/false is a boolean in YAML) is not allowed"),
    (["name=''"], "name: '' is not allowed; use 1 to 128 letters, digits, '_', '-' or '.', not starting with '.'"),
    (["name=../../x"], "name: '../../x' is not allowed"),
    (["name=.hidden"], "name: '.hidden' is not allowed"),
    (["name=a/b"], "name: 'a/b' is not allowed"),
    (["hardware.device=/nonexistent/nope.yaml"],
     "{c} (--set): hardware.device: /nonexistent/nope.yaml: file not found; expected a device card file"),
    (["hardware.crossbar=/nonexistent/nope.yaml"],
     "{c} (--set): hardware.crossbar: /nonexistent/nope.yaml: file not found; expected a crossbar card file"),
    (["hardware.crossbar={tmp}"], "{c} (--set): hardware.crossbar: {tmp} is a folder; expected a crossbar card"),
    (["model.source=checkpoint", "model.path=/nonexistent/m.safetensors"],
     "{c} (--set): model.path: /nonexistent/m.safetensors: file not found; expected a bayesim checkpoint"),
])
def test_bad_overrides_exit_2_before_running(tmp_path, capsys, no_run, sets, expect):
    args = [a for s in sets for a in ("--set", s.format(tmp=tmp_path))]
    assert main(["run", QUICK, "--out", str(tmp_path / "o"), *FAST, *args]) == 2
    assert expect.format(c=QUICK, tmp=tmp_path) in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_missing_files_named_in_a_config_file(tmp_path, capsys, no_run):
    p = tmp_path / "c.yaml"
    p.write_text("name: c\nhardware: {device: nope.yaml}\n")
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert _error(capsys) == (f"{p}: hardware.device: nope.yaml: file not found (looked beside the config, in "
                              f"{tmp_path}, and in {Path.cwd()}); expected a device card file (.yaml) or a "
                              "device name")
    p.write_text("name: c\nmodel: {source: pyro, arch: mlp, path: m/missing.pt}\n")
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert _error(capsys).startswith(f"{p}: model.path: m/missing.pt: file not found (looked beside the config, "
                                     f"in {tmp_path / 'm'}, and in {Path.cwd() / 'm'})")
    # the built-in quickstart (no config file) names itself
    assert main(["run", "--out", str(tmp_path / "o"), "--set", "hardware.crossbar=/nonexistent/x.yaml"]) == 2
    assert _error(capsys).startswith("<built-in quickstart> (--set): hardware.crossbar: /nonexistent/x.yaml")


@pytest.mark.parametrize("card, expect", [
    ("name: x\nadc: {bits: 1}\n", "{p}: adc.bits: 1 is out of range; allowed [2, 24]"),
    ("name: x\ndac: {bits: 1, signed: true}\n", "{p}: dac.bits: a signed DAC needs >= 2 bits"),
    ("name: x\nadc: {range: fixed, full_scale: 1e-300}\n",
     "{p}: adc.full_scale: 1e-300 is not representable in float32"),
    ("name: x\ntile: {rows: 8, cols: 8, rows: 16}\n", "{p}: tile.rows: duplicate key at line 2"),
    ("# empty card\n", "{p}: empty; expected a mapping with keys name,"),
])
def test_bad_crossbar_cards_exit_2(tmp_path, capsys, monkeypatch, card, expect):
    import bayesim.experiment.runner as runner

    def no_model(*a, **k):  # the runner loads the card before the model: stop there should it be accepted
        raise AssertionError("the model was loaded: the card should have been refused before")
    monkeypatch.setattr(runner, "load_network", no_model)
    p = tmp_path / "card.yaml"
    p.write_text(card)
    assert main(["run", QUICK, "--out", str(tmp_path / "o"), *FAST, "--set", f"hardware.crossbar={p}"]) == 2
    assert _error(capsys).startswith(expect.format(p=p))
    assert not (tmp_path / "o").exists()


def test_signed_dac_one_bit_from_config_exit_2(tmp_path, capsys, monkeypatch):
    """hardware.bits.dac = 1 on the default card (signed DAC) is refused before any simulation."""
    import bayesim.experiment.runner as runner

    def no_model(*a, **k):
        raise AssertionError("the model was loaded: the card should have been refused before")
    monkeypatch.setattr(runner, "load_network", no_model)
    assert main(["run", QUICK, "--out", str(tmp_path / "o"), *FAST, "--set", "hardware.bits.dac=1"]) == 2
    assert "a signed DAC needs >= 2 bits" in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_device_card_float32_range_exit_2(tmp_path, capsys, monkeypatch):
    import bayesim.experiment.runner as runner

    monkeypatch.setattr(runner, "resolve_crossbar", lambda cfg: (_ for _ in ()).throw(AssertionError("reached")))
    for text, key in (("range: {g_min_uS: 0, g_max_uS: 1e300}", "range.g_max_uS: 1e+300 is out of range; "
                                                                 "allowed (0.0, 100000.0]"),
                      ("range: {g_min_uS: 0, g_max_uS: 25, log_min_uS: 1e-300}",
                       "range.log_min_uS: 1e-300 is not representable in float32")):
        p = tmp_path / "dev.yaml"
        p.write_text(f"name: d\nmodel: gaussian\n{text}\n")
        assert main(["run", QUICK, "--out", str(tmp_path / "o"), *FAST, "--set", f"hardware.device={p}"]) == 2
        assert _error(capsys).startswith(f"{p}: {key}")


@pytest.mark.parametrize("args, expect", [
    (["--samples", "1000000000000"], "--samples 1000000000000 is out of range; allowed 1 to 10000"),
    (["--samples", "0"], "--samples 0 is out of range; allowed 1 to 10000"),
    (["--repeat", "101"], "--repeat 101 is out of range; allowed 1 to 100"),
])
def test_bench_limits(capsys, monkeypatch, args, expect):
    import bayesim.crossbar.bench

    def boom(*a, **k):
        raise AssertionError("the benchmark ran: the bad flag should have been refused before")
    monkeypatch.setattr(bayesim.crossbar.bench, "run", boom)
    assert main(["bench", *args]) == 2
    assert _error(capsys) == expect


def test_out_checked_before_the_run(tmp_path, capsys, no_run):
    f = tmp_path / "f"
    f.write_text("x")
    for out, why in ((f, "exists and is not a folder"), (f / "sub", f"{f} is not a folder"),
                     (Path("/proc/bayesim_test_x"), "/proc is")):
        assert main(["run", QUICK, "--out", str(out), *FAST]) == 2
        msg = _error(capsys)
        assert msg.startswith(f"--out {out}: {why}"), msg
    (tmp_path / "d" / "metrics.json").mkdir(parents=True)
    assert main(["run", QUICK, "--out", str(tmp_path / "d"), *FAST]) == 2
    assert "metrics.json in it is a folder" in _error(capsys)
    assert f.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


def test_out_check_creates_nothing(tmp_path):
    from bayesim.cli.run import check_out_dir

    check_out_dir(tmp_path / "a" / "b" / "c")
    check_out_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_debug_prints_traceback_and_still_exits_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    r = subprocess.run([sys.executable, "-m", "bayesim", "--debug", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1].startswith(f"bayesim: error: {p}: malformed")


def test_broken_pipe_exits_quietly(data_dir):
    import os

    env = {**os.environ, "BAYESIM_DATA": str(data_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "bayesim", "data", "info", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert rc == 1


def test_default_out_folder_checked_too(tmp_path, capsys, monkeypatch, no_run):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("a file")
    assert main(["run", QUICK, *FAST, "--set", "name=x"]) == 2
    assert _error(capsys) == f"the output folder {Path('out') / 'x'}: exists and is not a folder; choose one with --out"


def test_builtin_quickstart_is_configs_quickstart():
    """`bayesim run` without a config runs exactly configs/quickstart.yaml."""
    from pathlib import Path

    from bayesim.cli.run import BUILTIN_QUICKSTART
    from bayesim.experiment import load_experiment

    repo = Path(__file__).resolve().parents[1]
    assert load_experiment(None, base=BUILTIN_QUICKSTART) == load_experiment(repo / "configs" / "quickstart.yaml")


# ------------------------------------------------------------------ output files, evaluate flags, import-pyro configs
LENET = str(REPO / "bayesim" / "resources" / "lenet5_default.safetensors")


@pytest.fixture
def no_work(monkeypatch):
    """Bad input must fail before the work: importing, evaluating or drawing device levels fails the test."""
    import bayesim.bnn.evaluate
    import bayesim.bnn.pyro_import
    import bayesim.data
    import bayesim.devices.stats

    def boom(*a, **k):
        raise AssertionError("the work started; the bad input should have been refused before")
    for mod, name in ((bayesim.bnn.pyro_import, "import_pyro"), (bayesim.bnn.evaluate, "evaluate_model"),
                      (bayesim.data, "load_test_splits"), (bayesim.devices.stats, "level_overlap")):
        monkeypatch.setattr(mod, name, boom)


def _bad_out_files(tmp_path):
    """(path, start of the reason) for output files that cannot be written."""
    f = tmp_path / "f"
    f.write_text("x")
    return [(str(tmp_path), "is a folder"), (str(tmp_path / "new") + "/", "is a folder"),
            ("/proc/bayesim_x.out", "/proc is"), ("/sys/bayesim_x.out", "/sys is"),
            (str(f / "x.out"), f"{f} is not a folder"), ("/dev/null", "exists and is not a regular file"),
            ("", "empty")]


@pytest.mark.parametrize("command", ["import-pyro", "devices"])
def test_out_file_checked_before_the_work(tmp_path, capsys, no_work, command):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"not read: the output path is refused first")
    for out, why in _bad_out_files(tmp_path):
        if command == "import-pyro":
            args, flag = ["import-pyro", str(ck), "--arch", "mlp", "--out", out], "--out"
        else:
            args, flag = ["devices", "show", "pcm", "--plot", out], "--plot"
        assert main(args) == 2
        msg = _error(capsys)
        assert msg.startswith(f"{flag} {out or repr(out)}: {why}"), msg
        assert msg.endswith("; give a file path that can be created or written"), msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "f"] and (tmp_path / "f").read_text() == "x"


def test_out_file_check_creates_nothing(tmp_path):
    from bayesim._io import check_out_file

    check_out_file(tmp_path / "a" / "b" / "m.safetensors")
    check_out_file(tmp_path / "m.safetensors")
    (tmp_path / "old.png").write_text("replaced")
    check_out_file(tmp_path / "old.png")
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]


def test_out_paths_in_a_folder_without_write_bits_are_refused_even_for_root(tmp_path):
    """A folder handed over read-only (as ../shared/data is) is never written into, whoever runs bayesim."""
    from bayesim._io import check_out_dir, check_out_file

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for check, what in ((check_out_file, "a file path"), (check_out_dir, "a folder")):
            with pytest.raises(BayesimError, match=rf"{ro} is not writable; give {what}"):
                check(ro / "sub" / "m.safetensors")
    finally:
        ro.chmod(0o755)


def test_evaluate_out_checked_before_evaluating(tmp_path, capsys, no_work, monkeypatch):
    f = tmp_path / "f"
    f.write_text("x")
    for out, why in ((f, "exists and is not a folder"), (Path("/proc/bayesim_x"), "/proc is")):
        assert main(["evaluate", "--model", LENET, "--embedded", "--limit", "10", "--out", str(out)]) == 2
        assert _error(capsys).startswith(f"--out {out}: {why}")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
    monkeypatch.chdir(tmp_path)  # an empty --out is not the current folder
    for out in ("", " "):
        assert main(["evaluate", "--model", LENET, "--embedded", "--limit", "10", "--out", out]) == 2
        assert _error(capsys) == f"--out {out!r}: empty; give a folder that can be created or written"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_train_empty_out_is_refused_not_replaced_by_the_configs(tmp_path, capsys, monkeypatch):
    import bayesim.bnn.train

    monkeypatch.setattr(bayesim.bnn.train, "train", lambda *a, **k: pytest.fail("trained with an empty --out"))
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"model: {{arch: mlp, widths: [8]}}\nepochs: 1\nout: {tmp_path / 'm.safetensors'}\n")
    assert main(["train", str(cfg), "--out", ""]) == 2
    assert _error(capsys) == "--out '': empty; give a file path that can be created or written"
    cfg.write_text("model: {arch: mlp, widths: [8]}\nepochs: 1\nout: ''\n")
    assert main(["train", str(cfg)]) == 2
    assert _error(capsys) == f"{cfg}: out '': empty; give a file path that can be created or written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_a_named_data_dir_must_be_a_folder(tmp_path, capsys, no_work):
    """evaluate (also with --embedded, which leaves it unused) and train refuse a --data-dir that is no folder."""
    (tmp_path / "file").write_text("x")
    for d, why in ((tmp_path / "nowhere", "folder not found"), (tmp_path / "file", "not a folder")):
        assert main(["evaluate", "--model", LENET, "--embedded", "--data-dir", str(d), "--out",
                     str(tmp_path / "o")]) == 2
        assert _error(capsys).startswith(f"--data-dir {d}: {why}; expected the data folder")
        assert main(["train", str(REPO / "configs" / "train_mlp.yaml"), "--data-dir", str(d), "--out",
                     str(tmp_path / "m.safetensors")]) == 2
        assert _error(capsys).startswith(f"--data-dir {d}: {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("args, expect", [
    (["--batch-size", "0"], "--batch-size 0 is out of range; allowed 1 to 1000000"),
    (["--batch-size", "-1"], "--batch-size -1 is out of range; allowed 1 to 1000000"),
    (["--batch-size", "1000001"], "--batch-size 1000001 is out of range; allowed 1 to 1000000"),
    (["--samples", "100000000"], "--samples 100000000 is out of range; allowed 1 to 100000"),
    (["--samples", "0"], "--samples 0 is out of range; allowed 1 to 100000"),
    (["--seed", "-1"], "--seed -1 is out of range; allowed 0 to 9223372036854775807"),
    (["--seed", "18446744073709551616"], "--seed 18446744073709551616 is out of range; allowed 0 to "
                                         "9223372036854775807"),
    (["--bits", "3"], "--bits 3 has no effect without --strategy: the model's strategy is fp (full precision); "
                      "give --strategy vpq, spq or jq"),
    (["--strategy", "fp", "--w-bits", "3"], "--w-bits 3 has no effect with --strategy fp (full precision)"),
    (["--range", "percentile"], "--range percentile has no effect without --strategy: the model's strategy is fp"),
    (["--act-upper", "inf"], "--act-upper inf: must be a finite number > 0 (or 'auto')"),
    (["--act-upper", "nan"], "--act-upper nan: must be a finite number > 0 (or 'auto')"),
    (["--act-upper", "1e39"], "--act-upper 1e39: not representable in float32 (it would become inf); must be a "
                              "finite number > 0 (or 'auto'); allowed 1.1755e-38 to 3.4028e+38 (float32)"),
    (["--act-upper", "1e-50"], "--act-upper 1e-50: not representable in float32 (it would become 0); must be a "
                               "finite number > 0 (or 'auto'); allowed 1.1755e-38 to 3.4028e+38 (float32)"),
    (["--act-upper", "0"], "--act-upper 0: must be a finite number > 0 (or 'auto'); allowed 1.1755e-38 to"),
    (["--limit", "0"], "--limit 0 is out of range; allowed 1 to 9223372036854775807"),
    (["--limit", "18446744073709551616"], "--limit 18446744073709551616 is out of range; allowed 1 to "
                                          "9223372036854775807"),
])
def test_evaluate_flags_limited_like_run(tmp_path, capsys, no_work, args, expect):
    """--samples, --seed and --batch-size have the bounds of the experiment config `bayesim run` reads."""
    from dataclasses import fields

    from bayesim.experiment.config import ExperimentConfig

    md = {f.name: f.metadata for f in fields(ExperimentConfig)}
    assert (md["samples"]["hi"], md["seed"]["hi"], md["batch_size"]["hi"]) == (100000, 2**63 - 1, 1000000)
    assert main(["evaluate", "--model", LENET, "--embedded", *args, "--out", str(tmp_path / "o")]) == 2
    assert _error(capsys).startswith(expect)
    assert not (tmp_path / "o").exists()


def test_import_config_paths_relative_to_the_config(tmp_path, capsys, monkeypatch, shared_models_dir):
    (tmp_path / "cfg" / "py").mkdir(parents=True)
    (tmp_path / "cfg" / "py" / "good.pt").symlink_to(shared_models_dir / "pfp_svi_mlp_e40.pt")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    c = tmp_path / "cfg" / "c.yaml"
    c.write_text("checkpoint: py/good.pt\narch: mlp\nout: models/m.safetensors\n")
    assert main(["import-pyro", "--config", str(c)]) == 0
    assert (tmp_path / "cfg" / "models" / "m.safetensors").is_file()
    assert list((tmp_path / "elsewhere").iterdir()) == []
    capsys.readouterr()
    # a missing checkpoint names the config file and the key, before importing
    c.write_text("checkpoint: py/missing.pt\narch: mlp\nout: m2.safetensors\n")
    assert main(["import-pyro", "--config", str(c)]) == 2
    assert _error(capsys) == (f"{c}: checkpoint: {tmp_path / 'cfg' / 'py' / 'missing.pt'}: file not found; "
                              "expected a Pyro parameter-store file (.pt)")
    # a bad out in the config names the config file and the key
    c.write_text("checkpoint: py/good.pt\narch: mlp\nout: py\n")
    assert main(["import-pyro", "--config", str(c)]) == 2
    assert _error(capsys).startswith(f"{c}: out: {tmp_path / 'cfg' / 'py'}: is a folder")
    assert not (tmp_path / "cfg" / "m2.safetensors").exists()
    # a checkpoint found only relative to the current folder is used, as experiment configs' model.path
    (tmp_path / "elsewhere" / "here.pt").symlink_to(shared_models_dir / "pfp_svi_mlp_e40.pt")
    c.write_text("checkpoint: here.pt\narch: mlp\nout: m3.safetensors\n")
    assert main(["import-pyro", "--config", str(c)]) == 0
    assert (tmp_path / "cfg" / "m3.safetensors").is_file()


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_termination_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys, signame, code):
    """SIGTERM / SIGHUP during an atomic write: the temporary file is removed (an unhandled SIGTERM used to
    leave it behind), nothing is written, the exit code is 128 + the signal, and the handlers are restored."""
    import os
    import signal
    import time

    import bayesim.cli.run as run_cmd
    from bayesim._io import atomic_path

    sig = getattr(signal, signame)
    before = signal.getsignal(sig)

    def fake_run(args):
        with atomic_path(tmp_path / "out" / "metrics.json") as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this ends
        raise AssertionError("not reached")

    monkeypatch.setattr(run_cmd, "run", fake_run)
    assert main(["run"]) == code
    assert capsys.readouterr().err.strip() == "bayesim: terminated"
    assert list(tmp_path.iterdir()) == []  # no temporary file, and the folder made for it removed again
    assert signal.getsignal(sig) == before


def test_atomic_write_onto_a_folder_is_one_clear_error(tmp_path):
    """A folder where a cache or output file should go (e.g. after a manual mkdir) is reported, not a
    traceback; the temporary file is removed."""
    from bayesim._io import atomic_path

    (tmp_path / "x.npz").mkdir()
    with pytest.raises(BayesimError, match=r"x.npz: cannot be written \(Is a directory\)"):
        with atomic_path(tmp_path / "x.npz") as tmp:
            tmp.write_bytes(b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]


def test_warnings_print_as_one_line(capsys, monkeypatch):
    """A warning of bayesim's own (e.g. a corrupt cache being regenerated) prints as one line, without the
    source file and line of the code that raised it."""
    import warnings

    from bayesim.cli import _one_line_warning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    assert main(["devices"]) == 0
    assert warnings.formatwarning is _one_line_warning
    text = warnings.formatwarning("the cache is corrupt; regenerating", UserWarning, "dirty.py", 112)
    assert text == "bayesim: warning: the cache is corrupt; regenerating\n"


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler for the test, as under an interactive shell: a process that a
    non-interactive shell starts in the background (`cmd &`, as some CI runners do) inherits SIGINT
    ignored, and Python then leaves it ignored."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("signal_after", ["SIGINT", "SIGTERM"])
def test_interrupt_after_the_outputs_are_written_exits_0(tmp_path, monkeypatch, capsys, signal_after,
                                                         python_ctrl_c):
    """A Ctrl-C or SIGTERM that lands after `wrote ...` (every output complete) no longer turns the exit code
    into an interruption's; one that lands before still does. The console script then ignores Ctrl-C for the
    interpreter's shutdown."""
    import os
    import signal
    import time

    import bayesim.cli as cli
    import bayesim.cli.run as run_cmd

    sig = getattr(signal, signal_after)

    def fake_run(args, after):
        if after:
            (tmp_path / "metrics.json").write_text("{}")
            cli.wrote(f"wrote {tmp_path / 'metrics.json'}")
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("not reached")

    for after, code in ((True, 0), (False, 130 if signal_after == "SIGINT" else 143)):
        monkeypatch.setattr(run_cmd, "run", lambda args: fake_run(args, after))
        assert main(["run"]) == code
        out = capsys.readouterr()
        assert ("wrote " in out.out) == after and ("bayesim: " in out.err) != after
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    before = {n: signal.getsignal(getattr(signal, n)) for n in names}
    try:
        assert cli.console_main(["devices"]) == 0
        assert all(signal.getsignal(getattr(signal, n)) == signal.SIG_IGN for n in names)
    finally:
        for n, h in before.items():
            signal.signal(getattr(signal, n), h)


def test_a_path_too_long_for_the_file_system_is_bad_input(tmp_path, capsys):
    long = "a" * 300
    for argv in (["run", QUICK, "--out", str(tmp_path / "o"), "--set", f"hardware.device={long}"],
                 ["run", QUICK, "--out", str(tmp_path / "o"), "--set", f"hardware.crossbar={long}"],
                 ["devices", "show", long]):
        assert main(argv) == 2
        assert "a path is too long for the file system (300 characters): aaaa" in _error(capsys)
    assert not (tmp_path / "o").exists()


def test_evaluate_says_how_the_model_was_quantized_and_warns_at_one_sample(tmp_path, capsys):
    import json

    out = tmp_path / "e"
    assert main(["evaluate", "--model", LENET, "--embedded", "--limit", "10", "--samples", "1",
                 "--strategy", "jq", "--bits", "4", "--out", str(out)]) == 0
    assert "samples = 1: a single weight draw has no spread" in capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["quantization"] == "post-training quantization" and m["ood"]["mean_epistemic"] == 0.0
    jq4 = str(REPO / "bayesim" / "resources" / "lenet5_jq4.safetensors")
    assert main(["evaluate", "--model", jq4, "--embedded", "--limit", "10", "--samples", "2", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"]["quantization"] == "as stored"
    # only the activation bits changed: the weights are as stored, the activations post-training quantized
    assert main(["evaluate", "--model", jq4, "--embedded", "--limit", "10", "--samples", "2", "--act-bits", "3",
                 "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"]["quantization"] == (
        "post-training quantization of the activations (weights as stored)")
    assert main(["evaluate", "--model", LENET, "--embedded", "--limit", "10", "--samples", "2", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["model"]["quantization"] == "none (fp)"
    assert "samples = 1" not in capsys.readouterr().err
