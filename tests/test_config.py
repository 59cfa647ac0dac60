from __future__ import annotations

import dataclasses
import json

import pytest

from medcm.config import (
    NAMED_CONFIGS,
    AuxHeadConfig,
    MedcmConfig,
    config_from_dict,
    config_to_dict,
    get_config,
    validate_config,
    with_overrides,
)


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_configs_are_valid_and_round_trip_through_json(name):
    config = get_config(name)
    validate_config(config)
    assert config_from_dict(MedcmConfig, json.loads(json.dumps(config_to_dict(config)))) == config


def test_aux_head_round_trips_with_tuple_classes():
    config = dataclasses.replace(
        get_config("cpu-small"),
        model=dataclasses.replace(get_config("cpu-small").model, aux_head=AuxHeadConfig("region", ("Head", "Thorax"))),
    )
    restored = config_from_dict(MedcmConfig, json.loads(json.dumps(config_to_dict(config))))
    assert restored.model.aux_head == AuxHeadConfig("region", ("Head", "Thorax"))


def test_unknown_config_name_lists_known_ones():
    with pytest.raises(ValueError, match="cpu-small"):
        get_config("tiny-gpu")


def test_unknown_field_is_rejected_with_its_name():
    data = config_to_dict(get_config("cpu-small"))
    data["model"]["image"]["depth"] = 3
    with pytest.raises(ValueError, match="depth"):
        config_from_dict(MedcmConfig, data)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model": {"image": {"arch": "resnet9"}}}, "model.image.arch"),
        ({"model": {"losses": {"triplet": 1.0}}}, "model.losses"),
        ({"model": {"losses": {"infonce": 0.0}}}, "model.losses"),
        ({"model": {"projection": "deep"}}, "model.projection"),
        ({"preprocess": {"frame": "last"}}, "preprocess.frame"),
        ({"train": {"batch_size": 1}}, "train.batch_size"),
    ],
)
def test_validate_names_the_bad_field(change, field):
    data = config_to_dict(get_config("cpu-small"))
    for section, values in change.items():
        for key, value in values.items():
            if isinstance(value, dict) and key in data[section] and key != "losses":
                data[section][key].update(value)
            else:
                data[section][key] = value
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate_config(config_from_dict(MedcmConfig, data))


def test_overrides_replace_only_given_train_fields():
    base = get_config("cpu-small")
    changed = with_overrides(base, epochs=3, lr=None)
    assert changed.train.epochs == 3 and changed.train.lr == base.train.lr and changed.model == base.model


def test_volume_kind_override_sets_or_removes_the_volume_encoder():
    from medcm.config import VolumeEncoderConfig, with_volume_kind

    base = get_config("cpu-small")
    assert base.model.volume == VolumeEncoderConfig()
    sliced = with_volume_kind(base, "2.5d")
    assert sliced.model.volume.kind == "2.5d" and sliced.model.volume.size == base.preprocess.image_size
    validate_config(sliced)
    assert with_volume_kind(base, "none").model.volume is None
    assert with_volume_kind(with_volume_kind(base, "none"), "3d").model.volume == VolumeEncoderConfig()
    with pytest.raises(ValueError, match="volume encoder: got '4d'"):
        with_volume_kind(base, "4d")


def test_a_config_saved_before_volumes_existed_loads_without_a_volume_encoder():
    data = config_to_dict(get_config("cpu-small"))
    del data["model"]["volume"]
    assert config_from_dict(MedcmConfig, data).model.volume is None
    data["model"]["volume"] = {"kind": "2.5d", "size": 96, "ct_window": [40, 400]}
    bad = config_from_dict(MedcmConfig, data)
    expected = r"model\.volume\.size: got 96 for a '2\.5d' encoder, expected preprocess\.image_size \(128\)"
    with pytest.raises(ValueError, match=expected):
        validate_config(bad)
