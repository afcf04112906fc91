"""Search spaces as data: shipped files validate against the real model Configs; bad files fail in one sentence."""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hpo.spaces import SPACE_DIR, DefineByRun, load_space, parse_space, published_point
from zsl.errors import UserError
from zsl.models import get_model

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def _model_available(space: str) -> bool:
    model = yaml.safe_load((SPACE_DIR / f"{space}.yaml").read_text())["model"]
    from zsl.models import MODELS
    return importlib.util.find_spec(MODELS[model].split(":")[0]) is not None


def test_shipped_spaces_exist():
    assert {"d2sc", "zerodiff", "eszsl"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_keys_are_real_config_fields(name):
    if not _model_available(name):
        pytest.skip(f"model of space {name} not merged yet")
    space = load_space(name)
    fields = {f.name for f in dataclasses.fields(get_model(space.model).Config)}
    assert {p.name for p in space.params} <= fields
    for entry in space.profiles.values():
        assert set(entry["fixed"]) <= fields
    assert set(space.published) <= {p.name for p in space.params}
    for p in space.params:  # published values lie in their ranges (checked again here, independently)
        if p.name in space.published:
            assert p.contains(space.published[p.name]), p.name


def test_d2sc_space_covers_the_claimed_shared_terms():
    if not _model_available("d2sc"):
        pytest.skip("d2sc not merged yet")
    names = {p.name for p in load_space("d2sc").params}
    for key in ("drg_lr", "dfg_lr", "dec_lr", "gamma_adv", "gamma_vae", "gamma_x0", "gamma_xt", "gamma_recons",
                "gamma_dist", "factor_dist", "gamma_con_step", "gamma_mmd", "gamma_center", "critic_iter",
                "lambda1", "n_steps", "beta_min", "beta_max", "noise_dim", "syn_num", "classifier_lr"):
        assert key in names, key


GOOD = {"model": "eszsl", "preset": "small",
        "params": {"gamma": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
                   "solver": {"type": "categorical", "choices": ["gradient", "closed_form"]},
                   "steps_per_epoch": {"type": "int", "low": 5, "high": 50, "step": 5, "when": {"solver": "gradient"}},
                   "lam": {"type": "fixed", "value": 0.1}},
        "published": {"gamma": 1.0, "solver": "closed_form"}}


def _with(path: list, value):
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


BAD = {
    "unknown top key": (_with(["colour"], "red"), "unknown key 'colour'"),
    "unknown model": (_with(["model"], "nosuch"), "unknown model 'nosuch'"),
    "unknown preset": (_with(["preset"], "huge"), "preset 'huge'"),
    "unknown hyperparameter": (_with(["params", "gama"], {"type": "float", "low": 0.1, "high": 1.0}), "unknown hyperparameter 'gama'"),
    "inverted range": (_with(["params", "gamma", "high"], 0.001), "empty or inverted"),
    "empty range": (_with(["params", "gamma", "high"], 0.01), "empty or inverted"),
    "wrong type": (_with(["params", "gamma", "low"], "small"), "'low' must be a finite number"),
    "int param as float": (_with(["params", "steps_per_epoch", "low"], 2.5), "'low' must be a finite integer"),
    "log with zero": (_with(["params", "gamma", "low"], 0.0), "log-scale range needs low > 0"),
    "unknown param key": (_with(["params", "gamma", "lo"], 1), "unknown key 'lo'"),
    "bad type name": (_with(["params", "gamma", "type"], "real"), "'type' one of"),
    "empty choices": (_with(["params", "solver", "choices"], []), "non-empty list"),
    "value of wrong type for model": (_with(["params", "lam", "value"], "big"), "must be of type float"),
    "when unknown": (_with(["params", "steps_per_epoch", "when"], {"nosuch": 1}), "'when' names 'nosuch'"),
    "when bad value": (_with(["params", "steps_per_epoch", "when"], {"solver": "sgd"}), "not a possible value"),
    "published outside": (_with(["published", "gamma"], 100.0), "outside its param's range"),
    "published unknown": (_with(["published", "lam"], 0.1), "not a sampled param"),
    "no params": (_with(["params"], KeyError), "needs the keys"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_one_sentence(case):
    doc, fragment = BAD[case]
    with pytest.raises(UserError) as err:
        parse_space(doc, "x.yaml", "x")
    message = str(err.value)
    assert fragment in message and "\n" not in message and "x.yaml" in message


def test_good_space_conditional_and_published_with_optuna():
    space = parse_space(GOOD, "g.yaml", "g")
    assert published_point(space) == {"gamma": 1.0, "solver": "closed_form"}  # steps_per_epoch inactive
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.enqueue_trial(published_point(space))
    fn = DefineByRun(space)
    seen = []
    for _ in range(12):
        trial = study.ask()
        constants = fn(trial)
        assert constants == {"lam": 0.1}
        seen.append(dict(trial.params))
        study.tell(trial, 1.0)
    assert seen[0] == {"gamma": 1.0, "solver": "closed_form"}
    for params in seen:
        assert ("steps_per_epoch" in params) == (params["solver"] == "gradient")
        if "steps_per_epoch" in params:
            assert params["steps_per_epoch"] % 5 == 0 and 5 <= params["steps_per_epoch"] <= 50
        assert 0.01 <= params["gamma"] <= 10.0
    assert any("steps_per_epoch" in p for p in seen)


def test_run_profile_pins_params_on_any_data():
    doc = _with(["profiles"], {"cpu": {"preset": "default", "fixed": {"gamma": 2.0, "epochs": 3}}, "gpu": {}})
    space = parse_space(doc, "s.yaml", "s")
    pinned, preset, overrides = space.specialise("cpu")
    assert preset == "default" and overrides == {"epochs": 3}
    assert [p.kind for p in pinned.params if p.name == "gamma"] == ["fixed"]
    assert "gamma" not in pinned.published
    for profile in ("gpu", "undefined"):
        same, preset_as_written, none = space.specialise(profile)
        assert same == space and preset_as_written == "small" and none == {}


def test_the_old_simulated_section_is_refused_with_its_new_spelling():
    with pytest.raises(UserError, match="profiles: {cpu:"):
        parse_space(_with(["simulated"], {"preset": "default"}), "s.yaml", "s")


def test_profile_auto_follows_the_trials_resources_and_unknown_profiles_are_refused():
    from hpo.experiment import SearchOptions, specialised_space
    assert SearchOptions().resolved_profile() == "demo"  # the embedded default data
    assert SearchOptions(datasets=["sim-CUB"]).resolved_profile() == "cpu"
    assert SearchOptions(data_root="/data").resolved_profile() == "cpu"
    assert SearchOptions(gpus_per_trial=0.5).resolved_profile() == "gpu"
    assert specialised_space(SearchOptions(space="d2sc", profile="cpu"))[1] == "cpu"
    assert specialised_space(SearchOptions(space="d2sc"))[1] == "small"  # demo
    assert specialised_space(SearchOptions(space="eszsl"))[1] == "small"  # no demo profile: cpu, then as written
    assert specialised_space(SearchOptions(space="d2sc", profile="gpu"))[1] == "paper"
    with pytest.raises(UserError, match="--profile laptop: space d2sc has no such run profile"):
        specialised_space(SearchOptions(space="d2sc", profile="laptop"))


def _cli(*args, cwd=ROOT):
    env = {"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "hpo/search.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,fragment", [
    (["--space", "nosuch"], "unknown search space 'nosuch'"),
    (["--space", "eszsl", "--num-samples", "0"], "--num-samples must be >= 1"),
    (["--space", "eszsl", "--objective", "median"], "--objective"),
    (["--space", "eszsl", "--num-samples", "many"], "--num-samples"),
    (["--space", "eszsl", "--datasets", "sim-MARS"], "unknown dataset 'sim-MARS'"),
    (["--space", "eszsl", "--resume", "--force"], "exclude each other"),
])
def test_cli_bad_flags_exit_2_one_sentence(args, fragment, tmp_path, capsys):
    code = search_main([*args, "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err and len(err.strip().splitlines()) == 1


def search_main(argv):
    from hpo.search import main

    try:
        return main(argv)
    except SystemExit as exit_:  # argparse errors exit from inside the parser
        return exit_.code


def test_cli_bad_yaml_file_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: eszsl\nparams: {gamma: {type: float, low: 1, high: [}\n")
    proc = _cli("--space", str(bad), "--storage-path", str(tmp_path))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr and "Traceback" not in proc.stderr
    inverted = tmp_path / "inv.yaml"
    inverted.write_text("model: eszsl\nparams: {gamma: {type: float, low: 10, high: 1}}\n")
    assert search_main(["--space", str(inverted), "--storage-path", str(tmp_path)]) == 2


def test_the_search_record_holds_the_run_profile_it_used(tmp_path):
    from hpo.experiment import SearchOptions, prepare

    opts = SearchOptions(space="d2sc", datasets=["sim-AWA2"], storage_path=str(tmp_path), name="p", profile="cpu")
    _, ctx, _ = prepare(opts)
    assert ctx.profile == "cpu" and ctx.base_configs["sim-AWA2"]["gen_hidden"] == 512
    _, ctx, _ = prepare(SearchOptions(space="eszsl", datasets=["sim-AWA2"], storage_path=str(tmp_path), name="q"))
    assert ctx.profile == ""  # eszsl defines no profiles: run as written
