"""Bring your own learning rule: ``biotorch.register_rule``, entry-point discovery and the conformance kit.

Rules defined outside ``biotorch/`` (the README's, written to a user's folder; the broken ones of ``tests/plugins``)
are registered in subprocesses, so that the registry of this process keeps biotorch's own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import biotorch
from biotorch import cli
from biotorch.rules import BUILT_IN, FA
from biotorch.testing import CHECKS, check_rule

PLUGINS = Path(__file__).parent / "plugins"
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fashion_mnist" / "lenet.yaml"


def python(code: str, *paths: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*paths, *filter(None, [os.environ.get(
        "PYTHONPATH")])])), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("rule, options", [*[(r, {}) for r in BUILT_IN], ("fa", {"feedback_init": "xavier"}),
                                           ("dfa", {"dfa_feedback": "factorized"}), ("wm", {"mirror_lr": 0.5})],
                         ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_the_built_in_rules_pass_the_kit(rule, options):
    ran = check_rule(rule, **options)
    assert set(ran) <= set(CHECKS) and {"local_gradients", "round_trip", "same_seed", "exports", "in_place"} <= set(ran)
    sends_feedback = not biotorch.RULES[rule].direct  # direct rules project from the output: no feedback tensor
    assert ("feedback_signal" in ran) == sends_feedback
    assert ("bp_when_feedback_is_w" in ran) == (rule in ("fa", "wm", "kp"))


def test_the_kit_names_the_broken_contract():
    result = python("""
        import json, biotorch.testing as kit, broken_rules as b
        out = {}
        for cls in (b.Moves, b.Forgets, b.Global, b.Fresh):
            try:
                kit.check_rule(cls)
                out[cls.name] = "passed"
            except kit.RuleCheckError as error:
                out[cls.name] = str(error)
        print(json.dumps(out))
    """, PLUGINS)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.splitlines()[-1])
    expected = {"moves": "fails in_place", "forgets": "fails round_trip", "global": "fails same_seed",
                "fresh": "fails feedback_signal"}
    for name, check in expected.items():
        assert failures[name].startswith(f"rule {name!r} {check}"), failures[name]


def readme_rule(folder: Path) -> Path:
    """The README's "Add your own rule" block as a module of a user's, ``readme_rule.py`` in ``folder``: importing it
    registers SignFA, runs the kit on it (printing the checks) and builds a model."""
    from test_readme import blocks

    (code,) = [code for language, code in blocks("### Add your own rule", "## Training") if language == "python"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "readme_rule.py").write_text(code)
    return folder


def fake_fashion_mnist(folder: Path) -> Path:
    """400 training and 100 test 28×28 images in Fashion-MNIST's files: each class a brightness level."""
    import torch
    from test_data import write_idx

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 400), ("t10k", 100)):
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        images = (torch.rand(n, 28, 28, generator=g) * 60).to(torch.uint8) + (labels.view(-1, 1, 1) * 19)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


def test_a_rule_from_outside_biotorch_joins_the_hub(tmp_path, capsys):
    """The done-when of the rule API, on the README's rule as a user's module: the kit, recipe training, save and
    reload, `biotorch list`, timm, and `biotorch bench` (on a stand-in for Fashion-MNIST's files: tests read no real
    dataset) printing its row beside the LeNet cards."""
    data, rule = fake_fashion_mnist(tmp_path / "fashion"), readme_rule(tmp_path / "user")
    result = python(f"""
        import io, json, pathlib, contextlib, torch, timm, biotorch
        from biotorch import cli
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            import readme_rule                                    # registers SignFA, runs the kit, builds a model
        out = {{"kit": printed.getvalue().strip(), "built": readme_rule.model.fc1.rule.scale}}
        out["timm"] = timm.list_models("lenet_signfa") + [type(timm.create_model("resnet20_signfa")).__name__]
        run = pathlib.Path({str(tmp_path / "run")!r})
        out["train"] = cli.main(["train", "--recipe", {str(RECIPE)!r}, "--rule", "signfa", "--rule-option", "scale=2",
                                 "--data", "synthetic", "--epochs", "1", "--out", str(run), "--no-progress"])
        config = json.loads((run / "config.json").read_text())
        out["config"] = [config["rule"], config.get("rule_module"), config["rule_options"]]
        model, again = biotorch.from_pretrained(run), biotorch.create_model("lenet_signfa", checkpoint=run)
        x = torch.randn(2, 1, 32, 32)
        out["reloads"] = bool(torch.equal(model.eval()(x), again.eval()(x)))
        print(json.dumps(out))
        cli.main(["list", "lenet_*"])
        cli.main(["bench", "signfa", "--data-dir", {str(data)!r}, "--set", "val_size=100", "--set", "epochs=1",
                  "--attack-images", "20", "--out", str(run.parent / "bench")])
    """, rule, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert out["kit"] == str(list(CHECKS)) and out["built"] == 2.0
    assert out["timm"] == ["lenet_signfa", "CifarResNet"]
    assert out["train"] == 0 and out["reloads"] is True
    assert out["config"] == ["signfa", "readme_rule", {"scale": 2.0}]
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["lenet_signfa", "signfa"] for line in lines)
    table = lines[lines.index(next(line for line in lines if line.startswith("model "))):]
    names = [line.split()[0] for line in table[2:]]
    assert "lenet_signfa" in names and {f"lenet_{r}.fashion_mnist" for r in ("bp", "fa", "dfa")} <= set(names)
    mine = next(line for line in table if line.startswith("lenet_signfa (this run)"))
    assert mine.split()[3:5] == ["signfa", json.loads((tmp_path / "bench" / "metrics.json").read_text())[
        "test_top1"].__format__(".2f")]
    assert (tmp_path / "bench" / "bench.png").is_file() and (tmp_path / "bench" / "bench.json").is_file()

    # Without the module that defines it (as in this process, which never imported it), the checkpoint says which
    # module to import, in one line.
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--data", "synthetic"]) == 2
    loaded = capsys.readouterr().err
    assert loaded.count("\n") == 1 and "its rule 'signfa' is defined in the module 'readme_rule'" in loaded, loaded
    assert "import readme_rule" in loaded and "biotorch --plugin readme_rule" in loaded

    # On the command line, --plugin imports it first: by module name (the working directory is searched, as
    # `python -m` does) or as a file; a plug-in that cannot be imported is one line, exit 2.
    script = Path(sys.executable).with_name("biotorch")  # the console script pip installed beside this interpreter
    assert script.is_file(), f"no biotorch console script at {script}: pip install -e ."
    user = tmp_path / "user"
    shown = subprocess.run([str(script), "--plugin", "readme_rule", "info", str(tmp_path / "run")], cwd=user,
                           capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0 and "signfa" in shown.stdout, shown.stderr[-2000:]
    (user / "half_fa.py").write_text("import biotorch\n\n@biotorch.register_rule\nclass HalfFA(biotorch.rules.FA):\n"
                                     "    name = 'halffa'\n")
    listed = subprocess.run([str(script), "-p", str(user / "half_fa.py"), "list", "lenet_*"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0 and "lenet_halffa" in listed.stdout.split(), listed.stderr[-2000:]
    for plugin, message in (("no_such_rules", "No module named 'no_such_rules'"),
                            (str(user / "missing.py"), "no file at")):
        assert cli.main(["-p", plugin, "list"]) == 2  # the console script's main, in this process: nothing registers
        failed = capsys.readouterr().err
        assert failed.count("\n") == 1 and f"the plug-in {plugin!r} could not be imported" in failed, failed
        assert message in failed


def test_installed_packages_bring_rules_through_an_entry_point(tmp_path):
    site = tmp_path / "site"
    dist = site / "biotorch_signfa-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: biotorch-signfa\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[biotorch.rules]\nsignfa = readme_rule:SignFA\nbroken = no_such_module:X\n")
    result = python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import biotorch
        print("signfa" in biotorch.RULES, "lenet_signfa" in biotorch.list_models())
        print(*[str(w.message) for w in caught if "entry point" in str(w.message)])
    """, site, readme_rule(tmp_path / "user"))
    assert result.returncode == 0, result.stderr[-3000:]
    registered, warning = result.stdout.splitlines()[-2:]
    assert registered == "True True"
    assert "the rule 'broken' of no_such_module:X (biotorch.rules entry point) was not registered" in warning


def test_a_plug_in_that_exits_at_import_is_skipped_or_one_line(tmp_path):
    """sys.exit, or an argparse parser that reads biotorch's own command line, at a plug-in's import: an entry point
    is skipped with a warning (`import biotorch` and `biotorch list` go on), a --plugin file is one line, exit 2."""
    site = tmp_path / "site"
    dist = site / "biotorch_exits-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: biotorch-exits\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[biotorch.rules]\nexits = exits_at_import:X\n"
                                           "parses = parses_at_import:X\n")
    (site / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n")
    (site / "parses_at_import.py").write_text("import argparse\nparser = argparse.ArgumentParser()\n"
                                              "parser.add_argument('needed')\nparser.parse_args()\n")
    result = python(f"""
        import contextlib, io, warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import biotorch
            from biotorch import cli
            listed = cli.main(["list", "lenet_fa"])
        with contextlib.redirect_stderr(io.StringIO()) as err:
            loaded = cli.main(["-p", {str(site / "exits_at_import.py")!r}, "list"])
        print(listed, loaded, repr(err.getvalue()))
        print(*[str(w.message) for w in caught if "entry point" in str(w.message)], sep="\\n")
    """, site)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    codes = next(line for line in lines if line.startswith("0 "))
    assert codes.startswith("0 2 ") and codes.count("\\n") == 1 and "could not be imported: SystemExit: 3" in codes
    for name, value in (("exits", "exits_at_import:X"), ("parses", "parses_at_import:X")):
        assert any(f"the rule {name!r} of {value} (biotorch.rules entry point) was not registered: SystemExit" in line
                   for line in lines), result.stdout


def test_a_plug_in_file_is_never_taken_for_another_module(tmp_path):
    """A --plugin file is imported under its file name, or refused in one line when that name is another module's
    (json.py: the standard library's; a second myrules.py); the same file twice is imported once."""
    for folder, name, rule in (("plug", "json", "jsonfa"), ("a", "myrules", "arule"), ("b", "myrules", "brule")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.py").write_text(
            f"import biotorch\n\n@biotorch.register_rule\nclass R(biotorch.rules.FA):\n    name = {rule!r}\n")
    result = python("""
        import contextlib, io, json
        from biotorch import cli
        out = []
        for plugins in (["plug/json.py"], ["a/myrules.py", "a/myrules.py"], ["a/myrules.py", "b/myrules.py"]):
            with contextlib.redirect_stdout(io.StringIO()) as listed, contextlib.redirect_stderr(io.StringIO()) as err:
                code = cli.main([arg for p in plugins for arg in ("-p", p)] + ["list", "lenet_*"])
            out.append([code, listed.getvalue().split(), err.getvalue()])
        print(json.dumps(out))
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (stdlib, twice, other) = json.loads(result.stdout.splitlines()[-1])
    assert stdlib[0] == 2 and stdlib[2].count("\n") == 1 and "'plug/json.py' could not be imported" in stdlib[2]
    assert "module name 'json' is taken" in stdlib[2], stdlib[2]
    assert twice[0] == 0 and "lenet_arule" in twice[1]
    assert other[0] == 2 and other[2].count("\n") == 1 and "'b/myrules.py' could not be imported" in other[2]
    assert "module name 'myrules' is taken" in other[2] and "a/myrules.py" in other[2], other[2]


class NotARule:
    name = "notarule"


@pytest.mark.parametrize("make, message", [
    (lambda: NotARule, "takes a subclass of biotorch.Rule"),
    (lambda: type("Under", (FA,), {"name": "sign_fa"}), "lowercase letters and digits"),
    (lambda: type("NoName", (FA,), {}), "its own class attribute"),
    (lambda: type("Taken", (FA,), {"name": "fa"}), "rule name 'fa' is taken by biotorch.rules.FA"),
    (lambda: type("Needs", (FA,), {"name": "needs", "__init__": lambda self, k: None}), "constructible with no"),
    (lambda: type("Opts", (FA,), {"name": "opts", "options": "k"}), "`options` must be a tuple"),
    (lambda: type("Tanh", (FA,), {"name": "tanh"}), "lenet_tanh would name two models"),
])
def test_register_rule_refuses_what_is_not_a_rule(make, message):
    before = dict(biotorch.RULES)
    with pytest.raises((TypeError, ValueError), match=message):
        biotorch.register_rule(make())
    assert biotorch.RULES == before
    assert biotorch.register_rule(FA) is FA and biotorch.RULES == before  # a built-in again: nothing changes


SEED_FA = '''
import torch, biotorch
from biotorch.rules import counter_uniform, init_bound


@biotorch.register_rule
class SeedFA(biotorch.Rule):
    """A first rule that reads its seed on the host: int() of a tensor, which the meta device cannot give."""
    name = "seedfa"

    def setup(self, layer, seed):
        layer.register_buffer("feedback_seed", torch.tensor(seed, device=layer.weight.device))
        key = int(layer.feedback_seed) * 7 + 1
        layer.register_buffer("feedback_weight", counter_uniform(layer.weight.shape, key, layer.weight.device)
                              * init_bound(layer.weight))

    def signal(self, layer, input):
        return layer.feedback_weight, None
'''


def test_a_setup_that_reads_a_tensor_on_the_host_is_told_it_runs_on_the_meta_device(tmp_path, capsys):
    (tmp_path / "seed_fa.py").write_text(SEED_FA)
    result = python("""
        import biotorch, seed_fa
        try:
            biotorch.testing.check_rule(seed_fa.SeedFA)
        except Exception as error:
            print(type(error).__name__, error)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.strip().splitlines()
    assert "rule 'seedfa': setup failed on the meta device" in line and "int(t)" in line, line
    listed = python("from biotorch import cli; cli.main(['-p', 'seed_fa', 'list', 'lenet_*'])", tmp_path)
    assert listed.stderr.count("\n") == 1 and "setup failed on the meta device" in listed.stderr, listed.stderr


def test_a_mistyped_entry_point_beside_the_decorator_says_the_rule_is_registered(tmp_path):
    site = tmp_path / "site"
    dist = site / "biotorch_signfa-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: biotorch-signfa\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[biotorch.rules]\nsignfa = readme_rule:SignFa\n")  # the class is SignFA
    result = python("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import biotorch
        print("signfa" in biotorch.RULES)
        print(*[str(w.message) for w in caught if "entry point" in str(w.message)])
    """, site, readme_rule(tmp_path / "user"))
    assert result.returncode == 0, result.stderr[-3000:]
    registered, warning = result.stdout.splitlines()[-2:]
    assert registered == "True" and "was not registered" not in warning, warning
    assert "readme_rule:SignFa" in warning and "its module registered signfa itself" in warning, warning


def test_the_rule_docs_answer_a_first_rules_questions():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Add your own rule"):readme.index("## Training")]
    for fact in ("meta device", "U(−1, 1)", "second element", "keep `@biotorch.register_rule`",
                 "the entry point's name"):
        assert fact in section, fact
    for method, fact in (("setup", "meta device"), ("signal", "direct"), ("after_step", "optimizer.step()"),
                         ("after_load", "load")):
        assert fact in (getattr(biotorch.Rule, method).__doc__ or ""), method
