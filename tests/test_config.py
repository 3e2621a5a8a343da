import re
from pathlib import Path

import pytest

from mnistlab.core import checks, config
from mnistlab.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def test_seed_toml_is_the_default_config():
    import dataclasses

    seed = config.load(EXPERIMENTS / "seed.toml")
    # everything but what names it (the study's directory "seed" and its table label)
    assert dataclasses.replace(seed, name="report_mlp", label="") == config.Config()


def test_defaults_are_the_reports_experiment():
    c = config.Config()
    assert (c.model.hidden, c.model.activation, c.model.init) == ([1024], "relu", "report")
    assert (c.optim.name, c.optim.lr, c.train.batch_size, c.train.epochs, c.train.seed) == ("sgd", 0.1, 100, 30, 123)
    assert c.data.val_fraction == 0.1


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.toml")), ids=lambda p: p.name)
def test_every_experiment_config_loads(path):
    checks.load_config(path)


def test_roundtrip_through_toml(tmp_path):
    c = checks.set_values(
        config.Config(), checks.parse_overrides(["model.hidden=[512, 256]", "optim.name=adam", "train.seed=7"])
    )
    p = tmp_path / "c.toml"
    p.write_text(config.dumps(c))
    assert config.load(p) == c


@pytest.mark.parametrize(
    "text, message",
    [
        ("[model]\nhiden = [10]\n", "unknown config key 'model.hiden'"),
        ("colour = 1\n", "unknown config key 'colour'"),
        ("[train]\nepochs = 'ten'\n", "'train.epochs' must be an integer"),
        ("[train]\nepochs = 2.5\n", "'train.epochs' must be an integer"),
        ("[train]\nepochs = true\n", "'train.epochs' must be an integer"),
        ("[optim]\nlr = 'fast'\n", "'optim.lr' must be a number"),
        ("[model]\nhidden = 1024\n", "'model.hidden' must be a list"),
        ("[model]\nhidden = [1024, 'x']\n", r"'model.hidden\[1\]' must be an integer"),
        ("model = 3\n", "'model' must be a table"),
        ("[train]\nepochs = 0\n", "'train.epochs' = 0 is invalid"),
        ("[optim]\nlr = -0.1\n", "'optim.lr' = -0.1 is invalid"),
        ("[data]\nval_fraction = 1.5\n", "'data.val_fraction' = 1.5 is invalid"),
        ("[model]\nactivation = 'swish'\n", "'model.activation' = 'swish' is unknown"),
        ("[model]\narch = 'resnet'\n", "'model.arch' = 'resnet' is unknown"),
        ("[optim]\nname = 'lion'\n", "'optim.name' = 'lion' is unknown"),
        ("[train]\nprecision = 'fp8'\n", "'train.precision' = 'fp8' is unknown"),
        ("[model]\nhidden = []\n", "'model.hidden' = \\[\\] is invalid"),
        ("[model]\narch = 'cnn'\nbatchnorm = true\n", "'model.batchnorm' is an MLP option"),
        ("[model]\nwidth = 64\n", "'model.width' is a CNN option"),
        ("[optim]\nnesterov = true\n", "'optim.nesterov'"),
        ("[train]\nepochs =\n", "not valid TOML"),
    ],
)
def test_bad_configs_are_rejected_by_name(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        checks.load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "nope.toml")


def test_overrides():
    c = checks.set_values(
        config.Config(),
        checks.parse_overrides(
            ["train.epochs=3", "optim.lr=0.05", "model.activation=tanh", "data.dir=/tmp/x", "model.batchnorm=true"]
        ),
    )
    assert (c.train.epochs, c.optim.lr, c.model.activation, c.data.dir, c.model.batchnorm) == (
        3,
        0.05,
        "tanh",
        "/tmp/x",
        True,
    )
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'train.epoch'")):
        checks.set_values(c, checks.parse_overrides(["train.epoch=3"]))
    with pytest.raises(ConfigError, match=re.escape("section.key=value")):
        checks.set_values(c, checks.parse_overrides(["train.epochs"]))
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'nope.x'")):
        checks.set_values(c, checks.parse_overrides(["nope.x=1"]))
