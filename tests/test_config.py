"""Config: presets, type-checked overrides, close-match errors, validation."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from glmc.config import (
    build_config,
    config_from_dict,
    config_keys,
    flatten,
    grid_presets,
    load_presets,
    method_preset,
    parse_override,
    stored_config,
)
from glmc.errors import ConfigError

PRESET_ROWS = {  # the authors' published runs: (dataset, IF, q, tau, gamma)
    "cifar10-lt-if100": ("cifar10-lt", 100, 0.0, 1.2, 4.0),  # 1 in the authors' list of commands
    "cifar10-lt-if50": ("cifar10-lt", 50, 0.0, 1.2, 1.0),
    "cifar10-lt-if10": ("cifar10-lt", 10, 0.2, 1.0, 2.0),
    "cifar100-lt-if100": ("cifar100-lt", 100, 0.0, 1.2, 4.0),
    "cifar100-lt-if50": ("cifar100-lt", 50, 0.2, 1.2, 6.0),
    "cifar100-lt-if10": ("cifar100-lt", 10, 0.2, 1.2, 4.0),
}


@pytest.mark.parametrize("name", PRESET_ROWS)
@pytest.mark.parametrize("authors", [False, True])
def test_cifar_presets_carry_the_authors_hyper_parameters(name, authors):
    config = build_config(name + ("-authors" if authors else ""))
    dataset, factor, q, tau, gamma = PRESET_ROWS[name]
    assert (config.data.dataset, config.data.imbalance_factor) == (dataset, factor)
    assert (config.train.resample_weighting, config.method.label_weighting, config.method.consistency_weight) == (q, tau, gamma)
    assert (config.train.epochs, config.train.batch_size, config.optim.lr, config.optim.weight_decay) == (200, 64, 0.01, 5e-3)
    assert (config.optim.momentum, config.optim.schedule, config.method.beta) == (0.9, "cosine", 1.0)
    expected = ("resnet32-wide", "glmc") if authors else ("resnet32", "standard")
    assert (config.model.backbone, config.data.split) == expected


def test_every_preset_builds_and_has_a_description():
    presets = load_presets()
    # CIFAR: GLMC, then 8 baselines + 4 ablations per setting, and three baselines at their own recipes; 5 large-image presets
    assert len(presets) == 13 + 6 * 12 + 6 * 3 + 5 and "quickstart" in presets
    for name, preset in presets.items():
        build_config(name)
        assert preset["description"]


def test_large_image_presets_hold_the_authors_rows():
    imagenet, inat = build_config("imagenet-lt-authors"), build_config("inat2018-authors")
    for config in (imagenet, inat):
        assert config.model.backbone == "resnext50-32x4d" and config.optim.schedule == "warmup-cosine"
        assert (config.optim.warmup_epochs, config.optim.lr, config.train.resample_weighting) == (10, 0.1, 0.2)
        assert (config.method.label_weighting, config.method.consistency_weight) == (1.0, 10.0)
    assert (imagenet.train.epochs, imagenet.train.batch_size, imagenet.optim.weight_decay) == (135, 120, 2e-4)
    assert (inat.train.epochs, inat.train.batch_size, inat.optim.weight_decay) == (120, 128, 1e-4)
    assert build_config("places-lt").data.dataset == "places-lt"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("data.unreadable", "ignore", "unknown unreadable-image policy 'ignore'"),
        ("data.resize", "200", "data.resize must be >= data.image_size"),
        ("data.workers", "-1", "data.workers must be >= 0"),
        ("data.image_size", "4", "data.image_size must be >= 8"),
    ],
)
def test_bad_image_file_options_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config("folder-resnet18", {key: value})


def test_overrides_are_typed_and_win_over_the_preset():
    config = build_config("cifar10-lt-if100", {"train.epochs": "3", "method.beta": "0.5", "train.drop_last": "true",
                                                "train.max_steps": "none", "data.data_root": "/x"})
    assert (config.train.epochs, config.method.beta, config.train.drop_last) == (3, 0.5, True)
    assert config.train.max_steps is None and config.data.data_root == "/x"


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.epochs", "ten", "train.epochs expects an integer, got 'ten'"),
        ("train.epochs", "2.5", "expects an integer"),
        ("optim.lr", "fast", "optim.lr expects a finite number, got 'fast'"),
        ("optim.lr", "nan", "expects a finite number"),
        ("optim.lr", "inf", "optim.lr expects a finite number, got 'inf'"),
        ("optim.weight_decay", "-inf", "expects a finite number"),
        ("method.label_weighting", "1e999", "method.label_weighting expects a finite number"),
        ("train.drop_last", "maybe", "expects true or false"),
        ("train.max_steps", "x", "expects an integer or none"),
    ],
)
def test_badly_typed_override_names_key_and_type(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, {key: value})


def test_unknown_key_names_close_matches():
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'; did you mean 'train.epochs'"):
        build_config(None, {"train.epoch": "3"})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.lr", "0", "optim.lr must be > 0"),
        ("optim.lr", "-0.1", "optim.lr must be > 0"),
        ("train.epochs", "0", "train.epochs must be > 0"),
        ("train.batch_size", "-1", "train.batch_size must be > 0"),
        ("train.eval_last_epochs", "-1", "train.eval_last_epochs must be >= 0"),
        ("train.resample_weighting", "-0.5", "resample_weighting \\(q\\) must be >= 0"),
        ("method.label_weighting", "-1", "label_weighting \\(tau\\) must be >= 0"),
        ("model.backbone", "resnet33", "unknown backbone 'resnet33'; did you mean 'resnet32'"),
        ("method.name", "glnc", "unknown method 'glnc'; did you mean 'glmc'"),
        ("data.dataset", "cifar10", "unknown dataset 'cifar10'"),
        ("train.device", "tpu", "train.device must be"),
        ("optim.schedule", "step", "unknown schedule 'step'"),
        ("train.compile_mode", "reduce_overhead", "unknown compile mode 'reduce_overhead'; did you mean 'reduce-"),
    ],
)
def test_values_no_run_could_use_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, {key: value})


def test_unknown_preset_names_close_matches():
    with pytest.raises(ConfigError, match="unknown preset 'cifar10-lt-if10O'; did you mean .*'cifar10-lt-if100'"):
        build_config("cifar10-lt-if10O")


def test_parse_override_splits_on_the_first_equals():
    assert parse_override("data.data_root=/a=b") == ("data.data_root", "/a=b")
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("train.epochs")


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(config_keys()) | st.text(max_size=20), value=st.text(max_size=12))
def test_any_override_either_builds_or_is_a_config_error(key, value):
    try:
        build_config(None, {key: value})
    except ConfigError as error:
        assert "\n" not in str(error)


# ---------------------------------------------------------------- presets by rule, per-method options, stored configs


def test_presets_made_by_rule_are_the_hand_written_ones():
    """`glmc presets` content is unchanged by the settings x methods grid: the same names in the same order, the same
    descriptions and values as the 90 hand-written entries of commit c561133."""
    import json
    from pathlib import Path

    before = json.loads((Path(__file__).parent / "data" / "presets-c561133.json").read_text())
    for name, preset in before.items():  # since then: gamma 4 for CIFAR-10-LT IF100 (the authors' posted command)
        if name.startswith("cifar10-lt-if100") and "consistency_weight" in preset["values"].get("method", {}):
            preset["values"]["method"]["consistency_weight"] = 4.0
    after = load_presets()
    assert [name for name in after if name in before] == list(before)
    assert all(name.endswith("-own-recipe") for name in after if name not in before)  # added since: the recipes
    for name, preset in before.items():
        assert after[name]["description"] == preset["description"], name
        assert flatten(after[name]["values"]) == flatten(preset["values"]), name


def test_a_grid_preset_gives_method_options_only_to_methods_that_have_them():
    grid = {"settings": {"s": {"title": "S", "published": "p", "values": {"method": {"label_weighting": 0.5}}}},
            "authors": {"values": {"model": {"backbone": "resnet32-wide"}}},
            "methods": {"ce": {"title": "CE"}, "glmc-global-only": {"title": "G", "values": {"train": {"epochs": 3}}}}}
    presets = grid_presets(grid)
    assert list(presets) == ["s", "s-authors", "s-ce", "s-glmc-global-only"]
    assert presets["s-ce"]["values"]["method"] == {"name": "ce"}
    assert presets["s-glmc-global-only"]["values"] == {"method": {"label_weighting": 0.5, "name": "glmc-global-only"},
                                                       "train": {"epochs": 3}}
    assert presets["s-authors"]["values"] == {"method": {"label_weighting": 0.5}, "model": {"backbone": "resnet32-wide"}}


def test_a_recipe_goes_on_top_of_its_method_and_its_values_by_setting_on_top_of_both():
    grid = {"settings": {"a": {"title": "A", "published": "p", "values": {"train": {"epochs": 200, "batch_size": 64}}},
                         "b": {"title": "B", "published": "p", "values": {"train": {"epochs": 200, "batch_size": 64}}}},
            "authors": {"values": {}}, "methods": {"ce": {"title": "CE"}},
            "recipes": {"own": {"title": "own", "method": "ce", "values": {"train": {"batch_size": 512, "epochs": 100}},
                                "by_setting": {"b": {"train": {"epochs": 300}}}}}}
    presets = grid_presets(grid)
    assert presets["a-own"]["values"]["train"] == {"epochs": 100, "batch_size": 512}
    assert presets["b-own"]["values"]["train"] == {"epochs": 300, "batch_size": 512}
    assert presets["b-own"]["values"]["method"] == {"name": "ce"} and presets["b-own"]["description"] == "B, own"


def test_an_option_the_method_does_not_have_is_an_error_naming_its_options():
    with pytest.raises(ConfigError, match=r"method glmc has no option 'focal_gamma' \(its options: beta, label_weighting"):
        build_config("quickstart", {"method.focal_gamma": "3"})
    with pytest.raises(ConfigError, match="method ce has no options, got method.beta"):
        build_config("quickstart", {"method.name": "ce", "method.beta": "0.5"})
    with pytest.raises(ConfigError, match="did you mean 'focal_gamma'"):
        build_config("quickstart", {"method.name": "focal", "method.focal_gama": "2"})


def test_switching_method_on_a_preset_drops_the_presets_options_of_the_old_method():
    config = build_config("cifar10-lt-if100", {"method.name": "focal", "method.focal_gamma": "2"})
    assert config.method.name == "focal" and config.method.focal_gamma == 2.0 and not hasattr(config.method, "label_weighting")
    assert build_config("cifar10-lt-if100", {"method.name": "glmc-no-consistency"}).method.label_weighting == 1.2


def test_a_config_stored_before_per_method_options_loads():
    """Run folders and checkpoints of the previous format held every method's options under `method`."""
    from pathlib import Path

    stored = yaml.safe_load((Path(__file__).parent / "data" / "config-deac618.yaml").read_text())
    assert "focal_gamma" in stored["method"]
    config = stored_config(stored)
    assert config == build_config("quickstart", {"train.precision": "bf16", "data.data_root": stored["data"]["data_root"]})
    assert stored_config(stored, {"method.name": "focal"}).method.focal_gamma == 1.0
    with pytest.raises(ConfigError):  # overrides stay strict
        stored_config(stored, {"method.focal_gamma": "2"})


# ---------------------------------------------------------------- baselines at their own papers' recipes

LDAM_DRW_RECIPE = {  # Cao et al. 2019, github.com/kaidic/LDAM-DRW cifar_train.py (presets.yaml names each line)
    "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 2e-4, "optim.schedule": "warmup-step",
    "optim.warmup_epochs": 5, "optim.decay_at": [0.8, 0.9], "optim.decay_factor": 0.01, "optim.schedule_lag": False,
    "optim.sam_rho": 0.0, "train.epochs": 200, "train.batch_size": 128, "train.drop_last": False,
    "method.name": "ldam-drw", "method.drw_start": 0.8, "method.cb_beta": 0.9999, "method.ldam_max_margin": 0.5,
    "method.ldam_scale": 30.0, "model.classifier": "cosine", "model.backbone": "resnet32", "data.split": "standard",
}


def beyond_the_recipe(config: dict) -> dict:
    """A flattened config less its optimiser and training keys: what a recipe preset must keep of its setting's."""
    return {key: value for key, value in config.items() if not key.startswith(("optim.", "train."))}


@pytest.mark.parametrize("setting", PRESET_ROWS)
def test_ldam_drw_own_recipe_presets_hold_cao_et_al_s_recipe(setting):
    config = flatten(build_config(f"{setting}-ldam-drw-own-recipe").to_dict())
    assert {key: config[key] for key in LDAM_DRW_RECIPE} == LDAM_DRW_RECIPE
    dataset, factor, *_ = PRESET_ROWS[setting]
    assert (config["data.dataset"], config["data.imbalance_factor"]) == (dataset, factor)
    # the same setting at GLMC's recipe keeps it: the recipe changes only the recipe
    glmc_recipe = flatten(build_config(f"{setting}-ldam-drw").to_dict())
    assert (glmc_recipe["optim.lr"], glmc_recipe["train.batch_size"], glmc_recipe["optim.schedule"]) == (0.01, 64, "cosine")
    assert beyond_the_recipe(config) == beyond_the_recipe(glmc_recipe)


@pytest.mark.parametrize("setting", PRESET_ROWS)
def test_ce_own_recipe_presets_hold_cao_et_al_s_erm_recipe(setting):
    """Cao et al.'s ERM rows: their LDAM-DRW recipe's optimiser, schedule and batch, with unweighted cross-entropy on
    a linear classifier; nothing else of the setting changes."""
    config = flatten(build_config(f"{setting}-ce-own-recipe").to_dict())
    erm = {key: value for key, value in LDAM_DRW_RECIPE.items() if key.startswith(("optim.", "train.", "data."))}
    assert {key: config[key] for key in erm} == erm
    assert (config["method.name"], config["model.classifier"], config["model.backbone"]) == ("ce", "linear", "resnet32")
    glmc_recipe = flatten(build_config(f"{setting}-ce").to_dict())
    assert beyond_the_recipe(config) == beyond_the_recipe(glmc_recipe)


BALANCED_SOFTMAX_RECIPE = {  # Ren et al. 2020, BalancedMetaSoftmax-Classification's balanced_softmax_imba200.yaml
    "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 5e-4, "optim.schedule": "ramp-cosine",
    "optim.warmup_start": 0.5, "optim.schedule_lag": False, "optim.sam_rho": 0.0, "train.batch_size": 512,
    "train.drop_last": True, "train.sampler": "power", "data.autoaugment": "cifar10",
    "data.cutout": 16, "method.name": "balanced-softmax", "model.classifier": "linear", "model.backbone": "resnet32",
    "data.split": "standard",
}


@pytest.mark.parametrize("setting", PRESET_ROWS)
def test_balanced_softmax_own_recipe_presets_hold_ren_et_al_s_recipe(setting):
    """Every value, and the length: the code's 13,000 iterations and 800 of warm-up as whole epochs of the setting's
    training set, ceil(iterations / ceil(N / 512)), N from the setting's long-tailed profile."""
    from glmc.data.longtail import exponential_profile

    config = flatten(build_config(f"{setting}-balanced-softmax-own-recipe").to_dict())
    assert {key: config[key] for key in BALANCED_SOFTMAX_RECIPE} == BALANCED_SOFTMAX_RECIPE
    dataset, factor, *_ = PRESET_ROWS[setting]
    assert (config["data.dataset"], config["data.imbalance_factor"]) == (dataset, factor)
    classes = 10 if dataset == "cifar10-lt" else 100
    loader_batches = math.ceil(sum(exponential_profile(50_000 // classes, classes, factor)) / 512)
    assert config["train.epochs"] == math.ceil(13_000 / loader_batches)
    assert config["optim.warmup_epochs"] == math.ceil(800 / loader_batches)
    glmc_recipe = flatten(build_config(f"{setting}-balanced-softmax").to_dict())
    assert (glmc_recipe["data.autoaugment"], glmc_recipe["data.cutout"], glmc_recipe["train.epochs"]) == ("none", 0, 200)


def test_augmentation_options_are_checked():
    with pytest.raises(ConfigError, match="unknown AutoAugment policy 'cifar'"):
        build_config(None, {"data.autoaugment": "cifar"})
    with pytest.raises(ConfigError, match="data.cutout must be >= 0"):
        build_config(None, {"data.cutout": "-1"})
    with pytest.raises(ConfigError, match="warmup_epochs must be < train.epochs"):
        build_config(None, {"optim.schedule": "ramp-cosine", "optim.warmup_epochs": "10", "train.epochs": "10"})


def test_a_list_value_comes_from_the_command_line_or_yaml_and_is_checked():
    assert build_config(None, {"optim.decay_at": "0.5, 0.75"}).optim.decay_at == [0.5, 0.75]
    assert build_config(None, {"optim.decay_at": [0.5]}).optim.decay_at == [0.5]
    assert build_config(None, {"optim.decay_at": ""}).optim.decay_at == []
    with pytest.raises(ConfigError, match="comma-separated list of finite numbers, got 'late'"):
        build_config(None, {"optim.decay_at": "late"})
    with pytest.raises(ConfigError, match="increasing fractions"):
        build_config(None, {"optim.decay_at": "0.9,0.8"})
    with pytest.raises(ConfigError, match="decay_factor must be in"):
        build_config(None, {"optim.decay_factor": "0"})


def test_glmc_presets_shows_a_presets_whole_config_and_what_two_differ_in(capsys):
    from glmc.cli import main

    name = "cifar10-lt-if100-balanced-softmax-own-recipe"
    assert main(["presets", name]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"# {name}: CIFAR-10-LT IF100, Balanced Softmax at Ren et al.'s own recipe\n")
    assert config_from_dict(yaml.safe_load(shown)) == build_config(name)  # what train would use, every key

    assert main(["presets", "cifar10-lt-if100-balanced-softmax", name]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["cifar10-lt-if100-balanced-softmax", name]
    glmc_recipe, own = (flatten(build_config(n).to_dict()) for n in ("cifar10-lt-if100-balanced-softmax", name))
    assert [row.split()[0] for row in rows] == [key for key in own if own[key] != glmc_recipe[key]]
    assert "optim.schedule       cosine" in "\n".join(rows) and rows[-1].split()[1:] == ["False", "True"]
    assert main(["presets", "quickstart", "quickstart"]) == 0 and "(the same config)" in capsys.readouterr().out


@pytest.mark.parametrize("names, message", [(["a", "b", "c"], "shows one preset or compares two, got 3"),
                                            (["quickstrat"], "unknown preset 'quickstrat'; did you mean 'quickstart'")])
def test_glmc_presets_refuses_bad_names_in_one_line(names, message, capsys):
    from glmc.cli import main

    assert main(["presets", *names]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_the_preset_of_a_method_on_a_setting_is_found_for_grid_presets_only():
    assert method_preset("cifar10-lt-if100", "cutmix") == "cifar10-lt-if100-cutmix"
    assert method_preset("cifar10-lt-if100-cutmix", "glmc") == "cifar10-lt-if100"
    assert method_preset("cifar10-lt-if100-ce", "focal") == "cifar10-lt-if100-focal"
    assert method_preset("cifar10-lt-if100", "glmc") is None  # itself
    assert method_preset("cifar10-lt-if100-authors", "ce") is None  # no -authors-ce preset
    assert method_preset("cifar10-lt-if100-ldam-drw-own-recipe", "ce") is None  # a recipe preset carries no setting: no note
    assert method_preset("quickstart", "ce") is None


def test_switching_a_grid_presets_method_notes_the_preset_that_trains_it_where_they_differ(tmp_path, capsys):
    from glmc.cli import main

    def note(preset: str, method: str) -> str:
        assert main(["train", "--preset", preset, "--set", f"method.name={method}", "--data-root", str(tmp_path),
                     "--output", str(tmp_path / "run")]) == 2  # no CIFAR-10 here: it stops before training
        return "".join(line for line in capsys.readouterr().err.splitlines(True) if "note:" in line)

    said = note("cifar10-lt-if100", "cutmix")  # cutmix_label: the method's default, where the cutmix preset says area
    assert "--preset cifar10-lt-if100-cutmix is cutmix as glmc's presets train it" in said and said.count("\n") == 1
    assert "--preset cifar10-lt-if100 is glmc" in note("cifar10-lt-if100-cutmix", "glmc")  # gamma 1, not the setting's 4
    assert note("cifar10-lt-if100", "ce") == ""  # the same config as cifar10-lt-if100-ce: nothing to say
    assert not (tmp_path / "run").exists()
