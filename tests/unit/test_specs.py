import pytest

from tlp.components.lib import specs
from tlp.components.lib.specs import ConfigError


def test_data_specs_parse():
    assert specs.parse_data_spec("tfds:cats_vs_dogs").name == "cats_vs_dogs"
    assert specs.parse_data_spec("folder:/photos").path == "/photos"
    assert specs.parse_data_spec("folder:gs://bucket/photos").path == "gs://bucket/photos"
    assert specs.parse_data_spec("sample").per_class == specs.SAMPLE_PER_CLASS
    assert specs.parse_data_spec("sample:25").per_class == 25
    assert str(specs.parse_data_spec("sample:25")) == "sample:25"


@pytest.mark.parametrize("spec", ["imagenet_cats", "csv:/x", "tfds:", "folder:", "", "sample:3", "sample:x"])
def test_bad_data_specs_name_the_value(spec):
    with pytest.raises(ConfigError) as error:
        specs.parse_data_spec(spec)
    assert repr(spec) in str(error.value) or spec.split(":")[-1] in str(error.value)


def test_short_name_is_registry_friendly():
    assert specs.parse_data_spec("tfds:cats_vs_dogs:4.0.1").short_name == "cats_vs_dogs"
    assert specs.parse_data_spec("folder:/home/me/My Photos/").short_name == "My-Photos"


def test_weights_specs(tmp_path):
    assert specs.parse_weights_spec("ImageNet") == "imagenet"
    assert specs.parse_weights_spec("none") == "none"
    weights = tmp_path / "base.h5"
    weights.write_bytes(b"x")
    assert specs.parse_weights_spec(str(weights)) == str(weights)
    with pytest.raises(ConfigError, match="does not exist"):
        specs.parse_weights_spec(str(tmp_path / "missing.h5"))
    with pytest.raises(ConfigError, match="not understood"):
        specs.parse_weights_spec("random")


def test_devices():
    assert specs.parse_devices("auto") == ("auto", 0)
    assert specs.parse_devices("cpu:2") == ("cpu", 2)
    assert specs.parse_devices("GPU") == ("gpu", 0)
    for bad in ("tpu", "cpu:0", "auto:2", "cpu:-1"):
        with pytest.raises(ConfigError, match="--devices"):
            specs.parse_devices(bad)


def test_base_checks():
    specs.check_base("MobileNetV2", 0.35, 96, "none")
    with pytest.raises(ConfigError, match="'VGG99' is not supported"):
        specs.check_base("VGG99", 1.0, 160, "none")
    with pytest.raises(ConfigError, match="--image-size 16"):
        specs.check_base("MobileNetV2", 1.0, 16, "none")
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        specs.check_base("MobileNetV2", 0.2, 160, "imagenet")
    with pytest.raises(ConfigError, match="no meaning"):
        specs.check_base("ResNet50V2", 0.5, 160, "none")


def test_fine_tune_at_beyond_layers():
    specs.check_fine_tune_at(153, 154, "MobileNetV2")
    with pytest.raises(ConfigError, match="--fine-tune-at 154 is beyond the 154 layers of MobileNetV2"):
        specs.check_fine_tune_at(154, 154, "MobileNetV2")
