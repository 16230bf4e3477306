import pytest

from racemarl.config import Config, ConfigError, apply_override, build_config, from_dict, to_dict, valid_keys


def test_defaults_validate_and_round_trip():
    cfg = Config().validate()
    assert from_dict(to_dict(cfg)) == cfg


def test_override_nested_and_type_coercion():
    cfg = build_config(
        None,
        [
            "learner.batch_size=128",
            "learner.lr_actor=3e-4",
            "race.vfm_pevfa=false",
            "net.critic_hidden=[64, 32]",
            "race.value_target_factor=0.5",
        ],
    )
    assert cfg.learner.batch_size == 128
    assert cfg.learner.lr_actor == pytest.approx(3e-4)
    assert cfg.race.vfm_pevfa is False
    assert cfg.net.critic_hidden == [64, 32]
    assert cfg.race.value_target_factor == 0.5


def test_int_is_accepted_for_float_but_not_the_reverse():
    cfg = build_config(None, ["learner.gamma=1"])
    assert isinstance(cfg.learner.gamma, float)
    with pytest.raises(ConfigError, match="learner.batch_size: expected int"):
        build_config(None, ["learner.batch_size=12.5"])


def test_unknown_key_names_the_valid_keys():
    with pytest.raises(ConfigError) as e:
        apply_override(Config(), "learner.batchsize=3")
    msg = str(e.value)
    assert "learner.batchsize" in msg and "learner.batch_size" in msg and "race.vmm_beta" in msg


def test_unknown_key_in_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("race:\n  popsize: 3\n")
    with pytest.raises(ConfigError, match="race.popsize"):
        build_config(preset)


def test_literal_and_range_checks():
    with pytest.raises(ConfigError, match="race.operators"):
        build_config(None, ["race.operators=column"])
    with pytest.raises(ConfigError, match="pop_size"):
        build_config(None, ["race.pop_size=1"], algo="race")
    with pytest.raises(ConfigError, match="algo"):
        build_config(None, [], algo="ppo")
    with pytest.raises(ConfigError, match="key=value"):
        build_config(None, ["learner.batch_size"])


def test_valid_keys_are_dotted_leaves():
    keys = valid_keys()
    assert "env.task" in keys and "race.pop_size" in keys and "env" not in keys
