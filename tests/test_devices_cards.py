"""Card validation (errors name the file and the key, with did-you-mean), the shipped cards, the
registry and the `bayesim devices` command."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bayesim.cli import main
from bayesim.devices import list_devices, load_card, load_device, register
from bayesim.errors import BayesimError, ConfigError

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "devices"
CARDS = ["ideal.yaml", "gaussian_mlc.yaml", "pcm_ibm.yaml", "rram_wan2022.yaml", "measured_pcm_drift.yaml"]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def expect(tmp_path, text, key, *words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_device(p)
    msg = str(e.value)
    assert str(p) in msg and f": {key}: " in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_unknown_keys_with_did_you_mean(tmp_path):
    expect(tmp_path, "name: x\nmodel: pcm\nprograming: {model: none}\n", "programing", "did you mean 'programming'")
    expect(tmp_path, "name: x\nmodel: gaussian\nprogramming: {coefs_uS: [0.1]}\n", "programming.coefs_uS",
           "did you mean 'coeffs_uS'")
    expect(tmp_path, "name: x\nmodel: pcm\ndrift: {model: pmc}\n", "drift.model", "did you mean 'pcm'")
    expect(tmp_path, "name: x\nmodel: pmc\n", "model", "did you mean 'pcm'")


def test_wrong_types_and_negative_sigma(tmp_path):
    expect(tmp_path, "name: x\nmodel: gaussian\nrange: {g_max_uS: lots}\n", "range.g_max_uS", "expected a number")
    expect(tmp_path, "name: x\nmodel: gaussian\nd2d: {relative: -0.1}\n", "d2d.relative", "out of range")
    expect(tmp_path, "name: x\nmodel: gaussian\ndrift: {nu_std: -0.01}\n", "drift.nu_std", "out of range")
    # inside float32 but physically nonsense: sanity bounds
    expect(tmp_path, "name: x\nmodel: gaussian\nrange: {g_max_uS: 1.0e9}\n", "range.g_max_uS", "out of range")
    expect(tmp_path, "name: x\nmodel: gaussian\ndrift: {model: power_law, nu: 3.0}\n", "drift.nu", "out of range")
    expect(tmp_path, "name: x\nmodel: gaussian\nprogramming: {coeffs_uS: [0.1, -0.5]}\n", "programming.coeffs_uS",
           "sigma is negative")
    expect(tmp_path, "name: x\nmodel: pcm\nread: {model: polynomial, coeffs_uS: [-0.1]}\n", "read.coeffs_uS",
           "sigma is negative")
    expect(tmp_path, "name: x\nmodel: gaussian\nfaults: {stuck_at_gmin: 0.7, stuck_at_gmax: 0.5}\n",
           "faults.stuck_at_gmax", "must not exceed 1")


def test_range_and_level_count(tmp_path):
    expect(tmp_path, "name: x\nmodel: gaussian\nrange: {g_min_uS: 40, g_max_uS: 10}\n", "range.g_min_uS",
           "must be below g_max_uS")
    expect(tmp_path, "name: x\nmodel: gaussian\nrange: {g_min_uS: 10, g_max_uS: 10}\n", "range.g_min_uS")
    expect(tmp_path, "name: x\nmodel: ideal\nrange: {levels_uS: [5.0]}\n", "range.levels_uS", "at least 2")
    expect(tmp_path, "name: x\nmodel: ideal\nrange: {n_levels: 1}\n", "range.n_levels", "out of range")
    expect(tmp_path, "name: x\nmodel: ideal\nrange: {levels_uS: [1.0, 30.0]}\n", "range.levels_uS")


def test_table_errors_name_the_csv(tmp_path):
    (tmp_path / "t.csv").write_text("target_uS,mean_uS,std_uS\n1,1.1,0.1\n# note\n5,5.2,-0.3\n")
    msg = expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: t.csv}\n", "programming.file",
                 "t.csv", "line 4", "negative std_uS")
    assert "line 4" in msg
    (tmp_path / "u.csv").write_text("target,mean\n1,2\n")
    expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: u.csv}\n", "programming.file", "header must be")
    (tmp_path / "v.csv").write_text("target_uS,mean_uS,std_uS\n1,1.1,0.1\n")
    expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: v.csv}\n", "programming.file", "at least 2 levels")
    expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: nope.csv}\n", "programming.file", "not found")
    (tmp_path / "folder.csv").mkdir()
    expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: folder.csv}\n", "programming.file",
           "is a folder, not a file")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftarget_uS,mean_uS,std_uS\n1,1.1,0.1\n5,5.2,0.3\n")
    assert load_device(write(tmp_path, "name: x\nmodel: table\nprogramming: {file: bom.csv}\n")).g_max == 5.0
    (tmp_path / "w.csv").write_text("target_uS,mean_uS,std_uS\n2,2.1,0.1\n50,49,0.5\n")
    expect(tmp_path, "name: x\nmodel: table\nrange: {g_min_uS: 0.0, g_max_uS: 25.0}\nprogramming: {file: w.csv}\n",
           "programming.file", "[2.0, 50.0]", "must lie in [g_min_uS, g_max_uS] = [0.0, 25.0]")
    # slipped units: a mean further from its target than the whole scale, a std beyond it (nS for uS)
    (tmp_path / "m.csv").write_text("target_uS,mean_uS,std_uS\n1,1.1,0.1\n7,70.2,0.3\n40,39.5,0.5\n")
    expect(tmp_path, "name: x\nmodel: table\nrange: {g_min_uS: 1.0, g_max_uS: 40.0}\nprogramming: {file: m.csv}\n",
           "programming.file", "the measured mean at target 7 uS is 70.2 uS, further from its target than the whole "
           "scale g_max_uS = 40")
    (tmp_path / "s.csv").write_text("target_uS,mean_uS,std_uS\n1,1.1,400\n40,39.5,1500\n")
    expect(tmp_path, "name: x\nmodel: table\nrange: {g_min_uS: 1.0, g_max_uS: 40.0}\nprogramming: {file: s.csv}\n",
           "programming.file", "the std at target 1 uS is 400 uS, more than the whole scale")
    (tmp_path / "smp.csv").write_text("target_uS,sample_uS\n1,1.1\n1,0.9\n"
                                      + "".join(f"40,{v}\n" for v in (39, 40, 41) * 3) + "40,300\n")
    expect(tmp_path, "name: x\nmodel: table\nrange: {clip: nonnegative}\nprogramming: {file: smp.csv}\n",
           "programming.file", "a measured sample of 300 uS lies further than the whole scale g_max_uS = 40 outside "
           "[1, 40] uS")
    # real readings scatter beyond the range's ends (the clip applies) and a narrow table may be noisy: accepted
    # (a stuck-on cell at a low target, an instrument offset below 0 at the top one)
    (tmp_path / "top.csv").write_text("target_uS,sample_uS\n0,0.1\n0,0.0\n2,2.1\n2,1.9\n2,28.0\n"
                                      "25,25.6\n25,24.2\n25,-0.03\n")
    assert load_device(write(tmp_path, "name: x\nmodel: table\nrange: {g_min_uS: 0, g_max_uS: 25, clip: range}\n"
                                       "programming: {file: top.csv}\n", "top.yaml")).g_max == 25.0
    (tmp_path / "two.csv").write_text("target_uS,mean_uS,std_uS\n10,10.2,1.2\n11,11.1,1.2\n")
    assert load_device(write(tmp_path, "name: x\nmodel: table\nprogramming: {file: two.csv}\n", "two.yaml")).g_max == 11.0


def test_plugin_card_errors(tmp_path):
    expect(tmp_path, "name: x\nmodel: missing.py:Cls\n", "model", "not found")
    write(tmp_path, "class NotADevice:\n    def __init__(self, **kw):\n        pass\n", "bad.py")
    expect(tmp_path, "name: x\nmodel: bad.py:NotADevice\n", "model", "DeviceModel protocol")
    write(tmp_path, "import numpy as np\n", "mod.py")
    expect(tmp_path, "name: x\nmodel: mod.py:np\n", "model", "'np' is a module, not a class or factory")
    msg = expect(tmp_path, f"name: x\nmodel: {DEV / 'examples' / 'my_device.py'}:MyDevice\nparams: {{nope: 1}}\n",
                 "params", "rejected its parameters")
    assert "nope" in msg
    expect(tmp_path, f"name: x\nmodel: {DEV / 'examples' / 'my_device.py'}:MyDevice\nrange: {{g_min_uS: 1}}\n",
           "range", "plug-in")
    # a value the plug-in itself refuses (ValueError in its constructor)
    expect(tmp_path, f"name: x\nmodel: {DEV / 'examples' / 'my_device.py'}:MyDevice\n"
                     "params: {g_min_uS: 1.0, g_max_uS: 20.0, sigma_rel: -1, read_rel: 0.01}\n",
           "params", "rejected its parameters", "must be >= 0")
    # any other failure of the plug-in's constructor: one message naming the card, not a traceback
    write(tmp_path, "class Boom:\n    def __init__(self, **kw):\n        raise RuntimeError('boom')\n", "boom.py")
    expect(tmp_path, "name: x\nmodel: boom.py:Boom\n", "model", "failed to construct the device: RuntimeError: boom")
    # sys.exit in the plug-in's import, constructor or methods is its failure, not the command's exit
    write(tmp_path, "import sys\nclass Quit:\n    def __init__(self, **kw):\n        sys.exit(3)\n", "quit.py")
    expect(tmp_path, "name: x\nmodel: quit.py:Quit\n", "model", "failed to construct the device: SystemExit: 3")
    write(tmp_path, "import sys\nsys.exit('bye')\n", "quit_import.py")
    expect(tmp_path, "name: x\nmodel: quit_import.py:Quit\n", "model", "failed to import: SystemExit: bye")
    # a raising property or method of the plug-in: one message naming the card and the method
    write(tmp_path, "import numpy as np\n"
                    "class Attr:\n    name = 'a'\n    g_max = 10.0\n    def __init__(self, **kw): pass\n"
                    "    @property\n    def g_min(self): raise RuntimeError('boom in property')\n"
                    "    def levels(self, n, spacing='linear'): return np.linspace(1, 10, n).astype('float32')\n"
                    "    def program(self, t, k, c): raise ValueError('program failed ' + 'x' * 500)\n"
                    "    def read(self, h, t, k, c): return h\n"
                    "    def program_sigma(self, g): return g * 0\n    def read_sigma(self, g, t): return g * 0\n"
                    "class Prog(Attr):\n    g_min = 1.0\n", "attr.py")
    expect(tmp_path, "name: x\nmodel: attr.py:Attr\n", "model", "plug-in Attr failed: RuntimeError: boom in property")
    dev = load_device(write(tmp_path, "name: x\nmodel: attr.py:Prog\n", "prog.yaml"))
    with pytest.raises(BayesimError, match=r"prog\.yaml: plug-in Prog\.program\(\) failed: ValueError: program failed x+ \.\.\.$"):
        dev.program(np.ones(3, np.float32), 1, 2)
    # complex outputs, an exception that cannot print itself, members that are missing, broken or not callable
    write(tmp_path, "import numpy as np\n"
                    "class Prog:\n    name = 'p'\n    g_min, g_max = 1.0, 10.0\n    def __init__(self, **kw): pass\n"
                    "    def levels(self, n, spacing='linear'): return np.linspace(1, 10, n).astype('float32')\n"
                    "    def program(self, t, k, c): return t\n    def read(self, h, t, k, c): return h\n"
                    "    def program_sigma(self, g): return g * 0\n    def read_sigma(self, g, t): return g * 0\n"
                    "class Cplx(Prog):\n    def program(self, t, k, c): return t + 1j\n"
                    "class E(Exception):\n    def __str__(self): raise ValueError('no str')\n"
                    "class NoStr(Prog):\n    def program(self, t, k, c): raise E()\n"
                    "class Exit(Prog):\n    def read(self, h, t, k, c): __import__('sys').exit(0)\n"
                    "class Half:\n    name = 'h'\n    g_min = 1.0\n    levels = None\n"
                    "    def __init__(self, **kw): pass\n"
                    "    @property\n    def g_max(self): raise RuntimeError('boom')\n", "more.py")
    dev = load_device(write(tmp_path, "name: x\nmodel: more.py:Cplx\n", "cplx.yaml"))
    with pytest.raises(BayesimError, match=r"Cplx\.program\(\) returned dtype complex"):
        dev.program(np.ones(3, np.float32), 1, 2)
    dev = load_device(write(tmp_path, "name: x\nmodel: more.py:NoStr\n", "nostr.yaml"))
    with pytest.raises(BayesimError, match=r"NoStr\.program\(\) failed: E: \(its message cannot be printed\)"):
        dev.program(np.ones(3, np.float32), 1, 2)
    dev = load_device(write(tmp_path, "name: x\nmodel: more.py:Exit\n", "exits.yaml"))
    with pytest.raises(BayesimError, match=r"exits\.yaml: plug-in Exit\.read\(\) failed: SystemExit: 0$"):
        dev.read(np.ones(3, np.float32), 1.0, 1, 2)
    expect(tmp_path, "name: x\nmodel: more.py:Half\n", "model",
           "missing or broken: g_max (raises RuntimeError), levels (not callable), program, read")
    # numbers in exponent notation (YAML 1.2 floats) reach the plug-in as numbers, not strings
    dev = load_device(write(tmp_path, f"name: sci\nmodel: {DEV / 'examples' / 'my_device.py'}:MyDevice\n"
                                      "params: {g_min_uS: 1, g_max_uS: 2e1}\n", "sci.yaml"))
    assert dev.g_max == 20.0
    # inside lists and mappings too
    from bayesim.config.schema import safe_load
    from bayesim.devices.registry import _param_value

    assert _param_value(safe_load("a: [2e1, '1e3', !!str 5e0, {b: .5e1}]")["a"]) == [20.0, "1e3", "5e0", {"b": 5.0}]
    # quoted or tagged, it is the string it says it is (the plug-in gets '2e1' and refuses it itself)
    for written in ("'2e1'", "!!str 2e1"):
        expect(tmp_path, f"name: sci\nmodel: {DEV / 'examples' / 'my_device.py'}:MyDevice\n"
                         f"params: {{g_min_uS: 1, g_max_uS: {written}}}\n", "params", "rejected its parameters")
    # a measured CSV given where a device goes: what it is and how to use it
    with pytest.raises(ConfigError, match=r"example_measured\.csv: a CSV file is a device's measured programming "
                                          r"table .* as devices/measured_pcm_drift\.yaml does"):
        load_device(DEV / "example_measured.csv")
    # a misspelt built-in with built-in sections is an unknown model, not a plug-in
    expect(tmp_path, "name: x\nmodel: pcmm\nrange: {g_min_uS: 0.1, g_max_uS: 25}\n", "model",
           "unknown model 'pcmm'", "did you mean 'pcm'?")


@pytest.mark.parametrize("card", CARDS)
def test_shipped_cards_are_valid_and_sourced(card):
    c = load_card(DEV / card)
    assert c.source.strip() and c.name
    dev = load_device(DEV / card)
    lv = dev.levels(4)
    assert lv.dtype == np.float32 and np.all(np.diff(lv) > 0)
    # every component the card sets is either sourced or declared an assumption
    import yaml

    raw = yaml.safe_load((DEV / card).read_text())
    for sec in ("range", "programming", "read", "drift", "faults", "d2d"):
        if sec in raw and raw[sec].get("model", "x") != "none":
            covered = [k for k in [*c.sources, *c.assumptions] if k == sec or k.startswith(sec + ".")]
            assert covered or card == "ideal.yaml", (card, sec)


def test_registry_register_and_list(tmp_path):
    class Fixed:
        name, g_min, g_max = "fixed", 0.0, 1.0
        gaussian_programming = True

        def levels(self, n, spacing="linear"):
            return np.linspace(0, 1, n, dtype=np.float32)

        def program(self, t, key, cell_key):
            return np.asarray(t, np.float32)

        def read(self, h, t_read, key, cell_key):
            return np.asarray(h, np.float32)

        def program_sigma(self, g):
            return np.zeros_like(g, dtype=np.float32)

        def read_sigma(self, g, t_read):
            return np.zeros_like(g, dtype=np.float32)

    register("fixed_test_device", Fixed)
    assert isinstance(load_device("fixed_test_device"), Fixed)
    write(tmp_path, "name: extra_card\nmodel: ideal\nsource: test\n", "extra.yaml")
    names = {(r["name"], r["kind"]) for r in list_devices([tmp_path])}
    assert {("pcm", "built-in"), ("pcm_ibm", "card"), ("extra_card", "card"),
            ("fixed_test_device", "registered")} <= names
    assert load_device("extra_card", [tmp_path]).name == "extra_card"
    with pytest.raises(BayesimError, match="did you mean 'pcm_ibm'"):
        load_device("pcm_ibn")
    with pytest.raises(BayesimError, match="does not exist"):
        list_devices([tmp_path / "nope"])


def test_list_marks_a_card_whose_name_a_builtin_takes(tmp_path):
    """The shipped devices/ideal.yaml is named 'ideal', which load_device resolves to the built-in: the
    listing says so, and says how to reach the card; a card with a free name gets no note."""
    rows = {(r["name"], r["kind"]): r for r in list_devices([tmp_path])}
    card = rows[("ideal", "card")]
    assert "load it by path" in card["note"] and "built-in" in card["note"]
    assert "note" not in rows[("pcm_ibm", "card")] and "note" not in rows[("ideal", "built-in")]
    assert not any("invalid card" in r["source"] for r in rows.values())  # every shipped card is valid
    write(tmp_path, "name: flipped\nmodel: gaussian\nrange: {g_min_uS: 40, g_max_uS: 10}\n", "flipped.yaml")
    row = {r["name"]: r for r in list_devices([tmp_path])}["flipped"]
    assert row["source"].startswith("(invalid card: ") and "must be below g_max_uS" in row["source"]


def test_cli_list_and_show(tmp_path, capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "pcm_ibm" in out and "built-in" in out and "rram_wan2022" in out
    png = tmp_path / "p.png"
    assert main(["devices", "show", "rram_wan2022", "--plot", str(png), "--samples", "500"]) == 0
    out = capsys.readouterr().out
    assert png.stat().st_size > 1000 and "distinguishable at 1 sigma" in out and "coeffs_uS" in out
    assert main(["devices", "show", str(DEV / "examples" / "my_device.yaml"), "--levels", "4"]) == 0
    assert main(["devices", "show", "nope"]) == 2
    assert "unknown device" in capsys.readouterr().err


@pytest.mark.parametrize("args, text", [
    (["--spacing", "measured"], "--spacing measured: device 'pcm' has no measured levels"),
    (["--levels", "0"], "--levels must be in [2, 65536], got 0"),
    (["--levels", "100000000"], "--levels must be in [2, 65536], got 100000000"),
    (["--samples", "1000000000"], "--samples must be in [2, 1000000], got 1000000000"),
    (["--levels", "65536", "--samples", "1000"], "--levels x --samples must be at most 20,000,000 cells"),
    (["--t-read", "inf"], "--t-read must be in [0, 1e10] s"),
    (["--seed", "-1"], "--seed must be in [0, 2^63 - 1], got -1"),
])
def test_cli_show_bounds(args, text, capsys):
    """Each bad flag of `devices show`: exit 2 with a message naming it (were tracebacks or silent defaults)."""
    assert main(["devices", "show", "pcm", *args]) == 2
    assert text in capsys.readouterr().err


def test_distinguishable_levels_counts():
    from bayesim.devices import distinguishable_levels, max_distinguishable_levels

    assert distinguishable_levels([0, 1, 2, 3], [0.4] * 4) == 4
    assert distinguishable_levels([0, 1, 2, 3], [0.6] * 4) == 2  # 0 and 2 (2 > 1.2), then 3 too close to 2
    assert max_distinguishable_levels(load_device("ideal")) == float("inf")
    # constant sigma s on [0, 25]: levels every 2s (+ grid step) -> floor(25 / 2s) + 1
    from bayesim.devices.card import build_card
    from bayesim.devices.composed import ComposedDevice

    d = ComposedDevice(build_card({"name": "c", "model": "ideal", "programming": {"model": "polynomial",
                                                                                 "coeffs_uS": [1.0]}}))
    assert max_distinguishable_levels(d, 1.0) == 13


def test_intrinsic_sigma_and_realisable_range():
    from bayesim.devices import intrinsic_sigma, realisable_sigma

    d = load_device("rram")
    g = np.float32([10.0, 20.0])
    p = d.program_sigma(g).astype(np.float64)
    np.testing.assert_allclose(intrinsic_sigma(d, g, 1.0, "program"), p, rtol=1e-6)
    np.testing.assert_allclose(intrinsic_sigma(d, g, 1.0, "read"), [0.4, 0.4], rtol=1e-6)
    np.testing.assert_allclose(intrinsic_sigma(d, g, 1.0, "both"), np.sqrt(p ** 2 + 0.16), rtol=1e-6)
    r = realisable_sigma(d, source="program")
    # the Wan 2022 polynomial: 0.722 uS at g_min = 1 uS, peaks near G/g_max = 0.27 (about 2.3 uS)
    assert abs(r["min"] - 0.723) < 0.01 and 2.2 < r["max"] < 2.4
    assert realisable_sigma(load_device("ideal"))["max"] == 0.0


def test_sanity_bounds_catch_slipped_exponents(tmp_path):
    """Values a float32 holds but no device has: level counts, polynomial coefficients, CSV conductances,
    gain spread and the 1/f coefficient are bounded like range.g_max_uS."""
    expect(tmp_path, "name: x\nmodel: gaussian\nrange: {g_min_uS: 0, g_max_uS: 25, n_levels: 100000000}\n",
           "range.n_levels", "out of range", "65536")
    expect(tmp_path, "name: x\nmodel: gaussian\nprogramming: {coeffs_uS: [0.1, 1.0e30]}\n",
           "programming.coeffs_uS[1]", "out of range", "100000")
    expect(tmp_path, "name: x\nmodel: pcm\nread: {model: polynomial, coeffs_uS: [1.0e38]}\n", "read.coeffs_uS[0]")
    expect(tmp_path, "name: x\nmodel: gaussian\nd2d: {relative: 1.0e30}\n", "d2d.relative", "out of range")
    expect(tmp_path, "name: x\nmodel: pcm\nread: {q_coeff: 1.0e30}\n", "read.q_coeff", "out of range")
    (tmp_path / "big.csv").write_text("target_uS,mean_uS,std_uS\n2,2.1,0.1\n1e30,1e30,0.5\n")
    expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: big.csv}\n", "programming.file", "big.csv",
           "line 3", "at most 100000 uS")
    (tmp_path / "std.csv").write_text("target_uS,mean_uS,std_uS\n2,2.1,1e38\n5,5,0.5\n")
    expect(tmp_path, "name: x\nmodel: table\nprogramming: {file: std.csv}\n", "programming.file", "line 2")


def test_log_levels_without_a_positive_lowest_level_name_the_card(tmp_path):
    p = write(tmp_path, "name: d\nmodel: gaussian\nrange: {g_min_uS: 0, g_max_uS: 25}\n")
    dev = load_device(p)
    assert dev.levels(4, "linear")[0] == 0
    with pytest.raises(ConfigError, match=rf"{p}: range.log_min_uS: log spacing .* set range.log_min_uS"):
        dev.levels(4, "log")


def test_plugin_outputs_are_checked_and_the_card_named(tmp_path):
    """A plug-in returning the wrong shape or NaN stops with a message naming the card and the method,
    instead of a numpy traceback in the crossbar or NaN predictions; its class stays its own."""
    write(tmp_path, "import numpy as np\n"
                    f"import sys; sys.path.insert(0, {str(DEV / 'examples')!r})\n"
                    "from my_device import MyDevice\n"
                    "class BadShape(MyDevice):\n"
                    "    def program(self, targets, key, cell_key):\n"
                    "        return super().program(targets, key, cell_key).ravel()[:1]\n"
                    "class NaNRead(MyDevice):\n"
                    "    def read(self, held, t_read, key, cell_key):\n"
                    "        return np.full(np.shape(held), np.nan, np.float32)\n"
                    "class NaNLevels(MyDevice):\n"
                    "    def levels(self, n, spacing='linear'):\n"
                    "        return np.full(n, np.nan, np.float32)\n"
                    "class NegSigma(MyDevice):\n"
                    "    def program_sigma(self, g):\n"
                    "        return np.float32(0.1) * (np.asarray(g, np.float32) - np.float32(16.7))\n"
                    "class Descending(MyDevice):\n"
                    "    def levels(self, n, spacing='linear'):\n"
                    "        return super().levels(n, spacing)[::-1].copy()\n", "plug.py")
    targets = np.full((3, 4), 5.0, np.float32)
    dev = load_device(write(tmp_path, "name: bad\nmodel: plug.py:BadShape\n", "bad.yaml"))
    assert type(dev).__name__ == "BadShape"
    with pytest.raises(BayesimError, match=r"bad.yaml: plug-in BadShape.program\(\) returned shape \(1,\) for an "
                                           r"input of shape \(3, 4\); it must return finite conductances"):
        dev.program(targets, 1, 2)
    dev = load_device(write(tmp_path, "name: nan\nmodel: plug.py:NaNRead\n", "nan.yaml"))
    held = dev.program(targets, 1, 2)
    with pytest.raises(BayesimError, match=r"nan.yaml: plug-in NaNRead.read\(\) returned 12 NaN or Inf values"):
        dev.read(held, 1.0, 3, 2)
    dev = load_device(write(tmp_path, "name: lv\nmodel: plug.py:NaNLevels\n", "lv.yaml"))
    with pytest.raises(BayesimError, match=r"lv.yaml: plug-in NaNLevels.levels\(\) returned 4 NaN"):
        dev.levels(4)
    dev = load_device(write(tmp_path, "name: neg\nmodel: plug.py:NegSigma\n", "neg.yaml"))
    with pytest.raises(BayesimError, match=r"neg.yaml: plug-in NegSigma.program_sigma\(\) returned 1 negative stds "
                                           r"\(min -1.17\); it must return finite stds >= 0"):
        dev.program_sigma(np.float32([5.0, 20.0]))
    dev = load_device(write(tmp_path, "name: desc\nmodel: plug.py:Descending\n", "desc.yaml"))
    with pytest.raises(BayesimError, match=r"Descending.levels\(\) returned levels that do not strictly ascend; it "
                                           r"must return strictly ascending levels in \[g_min, g_max\]"):
        dev.levels(4)
    good = load_device(DEV / "examples" / "my_device.yaml")
    assert good.program(targets, 1, 2).shape == (3, 4) and np.isfinite(good.levels(5, "linear")).all()


def test_plugin_conductances_levels_and_lists_are_checked(tmp_path):
    """Conductances outside [0, 1e5] uS, repeated levels or levels beyond [g_min, g_max] stop with the card and
    the method named; a list comes back as an array (what the callers compute with); a __slots__ class, whose
    methods cannot be wrapped on the instance, is checked through a proxy."""
    write(tmp_path, "import numpy as np\n"
                    f"import sys; sys.path.insert(0, {str(DEV / 'examples')!r})\n"
                    "from my_device import MyDevice\n"
                    "class Neg(MyDevice):\n"
                    "    def program(self, targets, key, cell_key):\n"
                    "        return super().program(targets, key, cell_key) - 1000\n"
                    "class Huge(MyDevice):\n"
                    "    def read(self, held, t_read, key, cell_key):\n"
                    "        return np.asarray(held) * 1e30\n"
                    "class Flat(MyDevice):\n"
                    "    def levels(self, n, spacing='linear'):\n"
                    "        return np.full(n, 5.0, np.float32)\n"
                    "class Beyond(MyDevice):\n"
                    "    def levels(self, n, spacing='linear'):\n"
                    "        return np.linspace(self.g_min, 2 * self.g_max, n).astype(np.float32)\n"
                    "class Listy(MyDevice):\n"
                    "    def program(self, targets, key, cell_key):\n"
                    "        return super().program(targets, key, cell_key).tolist()\n"
                    "class Slotted:\n"
                    "    __slots__ = ('name', 'g_min', 'g_max')\n"
                    "    def __init__(self):\n"
                    "        self.name, self.g_min, self.g_max = 'slotted', 1.0, 20.0\n"
                    "    def levels(self, n, spacing='linear'):\n"
                    "        return np.linspace(1.0, 20.0, n).astype(np.float32)\n"
                    "    def program(self, targets, key, cell_key):\n"
                    "        return np.full(np.shape(targets), np.nan, np.float32)\n"
                    "    def read(self, held, t_read, key, cell_key):\n"
                    "        return np.asarray(held, np.float32)\n"
                    "    def program_sigma(self, g):\n"
                    "        return np.zeros(np.shape(g), np.float32)\n"
                    "    def read_sigma(self, g, t_read):\n"
                    "        return np.zeros(np.shape(g), np.float32)\n", "plug.py")
    targets = np.full((3, 4), 5.0, np.float32)

    def dev(cls):
        return load_device(write(tmp_path, f"name: {cls.lower()}\nmodel: plug.py:{cls}\n", f"{cls}.yaml"))

    with pytest.raises(BayesimError, match=r"Neg.yaml: plug-in Neg.program\(\) returned 12 conductances outside "
                                           r"\[0, 1e\+05\] uS \(min -99"):
        dev("Neg").program(targets, 1, 2)
    with pytest.raises(BayesimError, match=r"Huge.yaml: plug-in Huge.read\(\) returned 12 conductances outside"):
        dev("Huge").read(targets, 1.0, 1, 2)
    with pytest.raises(BayesimError, match=r"Flat.levels\(\) returned levels that do not strictly ascend"):
        dev("Flat").levels(4)
    with pytest.raises(BayesimError, match=r"Beyond.levels\(\) returned levels 1 .. 40 uS outside its range g_min "
                                           r"\.\. g_max = 1 \.\. 20 uS"):
        dev("Beyond").levels(4)
    got = dev("Listy").program(targets, 1, 2)
    assert isinstance(got, np.ndarray) and got.shape == (3, 4) and np.isfinite(got).all()
    slotted = dev("Slotted")
    assert slotted.g_max == 20.0 and slotted.levels(3).tolist() == [1.0, 10.5, 20.0]
    with pytest.raises(BayesimError, match=r"Slotted.yaml: plug-in Slotted.program\(\) returned 12 NaN"):
        slotted.program(targets, 1, 2)


@pytest.mark.parametrize("attrs, problem", [
    ("g_min = None", r"g_min is None; it must be a finite number of uS in \[0, 100000\]"),
    ("g_max = '20'", r"g_max is '20'; it must be a finite number"),
    ("g_min = -5.0", r"g_min is -5.0"),
    ("g_max = 1e30", r"g_max is 1e\+30"),
    ("g_max = float('nan')", r"g_max is nan"),
    ("g_max = True", r"g_max is True"),
    ("g_max = 1.0", r"g_max \(1 uS\) must exceed g_min \(1 uS\)"),
])
def test_plugin_range_is_checked_when_it_loads(tmp_path, attrs, problem):
    """A plug-in's g_min / g_max get a card's bounds (finite, 0 <= g_min < g_max <= 1e5 uS) before anything
    uses them: one message naming the card and its model key, not a TypeError deep in the crossbar."""
    write(tmp_path, f"import sys; sys.path.insert(0, {str(DEV / 'examples')!r})\n"
                    "from my_device import MyDevice\n"
                    "class Odd(MyDevice):\n"
                    "    def __init__(self, **kw):\n"
                    "        super().__init__(**kw)\n"
                    f"        self.{attrs}\n", "plug.py")
    p = write(tmp_path, "name: odd\nmodel: plug.py:Odd\n", "odd.yaml")
    with pytest.raises(ConfigError, match=r"odd.yaml: model: plug-in Odd[.:]") as e:
        load_device(p)
    assert e.match(problem)


def test_plugin_params_refuse_nan(tmp_path):
    plug = DEV / "examples" / "my_device.py"
    p = write(tmp_path, f"name: x\nmodel: {plug}:MyDevice\nparams: {{g_max_uS: .nan}}\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml: params.g_max_uS: is NaN"):
        load_device(p)
    p = write(tmp_path, f"name: x\nmodel: {plug}:MyDevice\nparams: {{taus: [1.0, .nan]}}\n", "y.yaml")
    with pytest.raises(ConfigError, match=r"y.yaml: params.taus\[1\]: is NaN"):
        load_device(p)


def _card_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, UserWarning)]


def test_a_card_name_wins_over_another_cards_file_stem(tmp_path, monkeypatch):
    """./devices/pcm_ibm.yaml named 'mine' leaves the name pcm_ibm to the shipped card that gives it (a file stem is
    only a fallback name), with one warning naming both files; a user card whose own name is a shipped name
    still takes its place, and a name two cards of one folder give is used with a warning naming both."""
    import warnings

    from bayesim.devices.registry import resolve_device

    monkeypatch.chdir(tmp_path)
    (tmp_path / "devices").mkdir()
    stem = write(tmp_path / "devices", (DEV / "gaussian_mlc.yaml").read_text().replace("name: gaussian_mlc",
                                                                                        "name: mine"), "pcm_ibm.yaml")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _, card = resolve_device("pcm_ibm")
        resolve_device("pcm_ibm")  # warned once
    assert card.path == str(DEV / "pcm_ibm.yaml")
    assert _card_warnings(rec) == [f"card name 'pcm_ibm' is ambiguous: it is the name of {DEV / 'pcm_ibm.yaml'} and "
                                   f"the file stem of {stem} (a card named 'mine'); a card's own name wins over a "
                                   f"file stem: using {DEV / 'pcm_ibm.yaml'} (give the other by its path)"]
    assert resolve_device("mine")[1].path == str(stem)
    rows = {r["where"]: r for r in list_devices() if r["kind"] == "card"}
    assert rows[str(stem)]["name"] == "mine" and "note" not in rows[str(DEV / "pcm_ibm.yaml")]

    own = write(tmp_path / "devices", (DEV / "gaussian_mlc.yaml").read_text().replace("g_max_uS: 40", "g_max_uS: 10"),
                "other.yaml")  # name: gaussian_mlc, the shipped card's: it takes its place, unwarned
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        dev, card = resolve_device("gaussian_mlc")
    assert card.path == str(own) and dev.g_max == 10.0 and not _card_warnings(rec)
    twin = write(tmp_path / "devices", own.read_text(), "twin.yaml")
    with pytest.warns(UserWarning, match=rf"card name 'gaussian_mlc' is ambiguous: {own} and {twin} both give it as "
                                         rf"their name; the first file \(sorted\) wins: using {own}"):
        assert resolve_device("gaussian_mlc")[1].path == str(own)


def test_folders_and_dangling_links_named_yaml_are_no_cards(tmp_path, monkeypatch, capsys):
    """A folder or a dangling link called x.yaml in ./devices is skipped with one warning line each (it was listed
    as an invalid card and took the name x); a name it would have taken reaches the card that gives it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "devices" / "fold.yaml").mkdir(parents=True)
    (tmp_path / "devices" / "pcm_ibm.yml").mkdir()
    (tmp_path / "devices" / "dang.yaml").symlink_to(tmp_path / "nowhere.yaml")
    (tmp_path / "devices" / "real.yaml").symlink_to(DEV / "ideal.yaml")  # a link to a file is a card
    assert main(["devices"]) == 0
    cap = capsys.readouterr()
    assert "fold.yaml" not in cap.out and "dang.yaml" not in cap.out and "invalid card" not in cap.out
    assert f"{tmp_path / 'devices' / 'real.yaml'}" in cap.out
    assert sorted(cap.err.strip().splitlines()) == [
        f"bayesim: warning: {tmp_path / 'devices' / 'dang.yaml'}: skipped: a link to nothing, not a card (a card is a "
        ".yaml / .yml file)",
        f"bayesim: warning: {tmp_path / 'devices' / 'fold.yaml'}: skipped: a folder, not a card (a card is a .yaml / "
        ".yml file)",
        f"bayesim: warning: {tmp_path / 'devices' / 'pcm_ibm.yml'}: skipped: a folder, not a card (a card is a .yaml "
        "/ .yml file)"]
    assert main(["devices", "show", "pcm_ibm", "--levels", "2", "--samples", "10"]) == 0
    assert main(["devices", "show", "dang"]) == 2
    assert "unknown device 'dang'" in capsys.readouterr().err


def test_a_broken_user_card_says_it_replaced_the_shipped_one(tmp_path, monkeypatch, capsys):
    """A user's card of a shipped card's name that does not load names its file and says it took the shipped
    card's place: otherwise the shipped card seems broken."""
    monkeypatch.chdir(tmp_path)
    bad = write(tmp_path, "name: pcm_ibm\nmodel: gaussian\nrange: {g_min_uS: 40, g_max_uS: 10}\n", "x.yaml")
    (tmp_path / "devices").mkdir()
    bad = bad.rename(tmp_path / "devices" / "x.yaml")
    assert main(["devices", "show", "pcm_ibm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bayesim: error: {bad}: range.g_min_uS: ") and err.count("\n") == 1
    assert f"; x.yaml takes the place of the shipped card 'pcm_ibm' ({DEV / 'pcm_ibm.yaml'}), as a card of that " \
           "name in a folder searched first: fix it, or rename or move it to use the shipped card" in err


#: A __slots__ plug-in (checked through a proxy, `_CheckedDevice`) and one whose program() returns NaN.
SLOTTED = ("import numpy as np\n"
           "class Slotted:\n"
           "    __slots__ = ('name', 'g_min', 'g_max')\n"
           "    def __init__(self):\n"
           "        self.name, self.g_min, self.g_max = 'slotted', 1.0, 20.0\n"
           "    def levels(self, n, spacing='linear'):\n"
           "        return np.linspace(1.0, 20.0, n).astype(np.float32)\n"
           "    def program(self, targets, key, cell_key):\n"
           "        return np.asarray(targets, np.float32)\n"
           "    def read(self, held, t_read, key, cell_key):\n"
           "        return np.asarray(held, np.float32)\n"
           "    def program_sigma(self, g):\n"
           "        return np.full(np.shape(g), 0.5, np.float32)\n"
           "    def read_sigma(self, g, t_read):\n"
           "        return np.full(np.shape(g), 0.1, np.float32)\n"
           "class Broken(Slotted):\n"
           "    __slots__ = ()\n"
           "    def program(self, targets, key, cell_key):\n"
           "        return np.full(np.shape(targets), np.nan, np.float32)\n")


def test_show_names_a_slotted_plugins_own_class(tmp_path, capsys):
    """`devices show` of a __slots__ plug-in (checked through a proxy) names the plug-in's class, as
    file.py:qualname (its module name is made up at import), not the proxy's; others as module:qualname."""
    write(tmp_path, SLOTTED, "plug.py")
    card = write(tmp_path, "name: slotted\nmodel: plug.py:Slotted\n", "slotted.yaml")
    assert main(["devices", "show", str(card), "--levels", "2", "--samples", "10"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"device: slotted  ({tmp_path / 'plug.py'}:Slotted)\n") and "_CheckedDevice" not in out
    assert main(["devices", "show", "pcm", "--levels", "2", "--samples", "10"]) == 0
    assert capsys.readouterr().out.startswith("device: pcm  (bayesim.devices.composed:ComposedDevice)\n")


def test_show_prints_nothing_before_an_error(tmp_path, capsys):
    """A device that fails while its levels are drawn prints the error alone (exit 2), not the first half of its
    table above it: the whole output is built before any of it is printed."""
    write(tmp_path, SLOTTED, "plug.py")
    card = write(tmp_path, "name: broken\nmodel: plug.py:Broken\n", "broken.yaml")
    assert main(["devices", "show", str(card), "--levels", "2", "--samples", "10"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith(f"bayesim: error: {card}: plug-in Broken.program() returned 20 NaN or "
                                                "Inf values") and cap.err.count("\n") == 1


@pytest.mark.parametrize("where", ["top", "list", "show"])
def test_a_cards_folder_that_is_not_one_names_the_flag(tmp_path, capsys, where):
    """--cards DIR must be a folder: the error names --cards (it said "card folder ..."), and `show` of a built-in
    checks it too (it was ignored)."""
    f = write(tmp_path, "name: x\nmodel: ideal\n", "x.yaml")
    for bad, why in ((tmp_path / "nope", "folder not found"), (f, "not a folder")):
        args = {"top": ["devices", "--cards", str(bad)], "list": ["devices", "list", "--cards", str(bad)],
                "show": ["devices", "show", "pcm", "--cards", str(bad)]}[where]
        assert main(args) == 2
        cap = capsys.readouterr()
        assert cap.out == "" and cap.err == (f"bayesim: error: --cards {bad}: {why}; expected a folder of device cards "
                                             "(*.yaml)\n")
