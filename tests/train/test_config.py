"""TrainConfig checks its own options, so a library user who bypasses the CLI gets the same one-line errors."""

import pytest

from lcr_sdk.errors import InputError
from lcr_sdk.train.config import TrainConfig


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cam_sign", "grad", "--cam-sign 'grad' is not valid; choose one of loss, score"),
        ("cam_norm", "sum", "--cam-norm 'sum' is not valid; choose one of max, none"),
        ("amp", "fp32", "--amp 'fp32' is not valid; choose one of bf16, fp16, off"),
        ("method", "byol", "--method 'byol' is not valid; choose one of lcr, moco"),
        ("arch", "vit_b_16", "--arch 'vit_b_16' is not valid; choose one of resnet18"),
        ("image_size", 31, "--image-size 31 is not valid; give an integer from 32 to 1024"),
        ("image_size", 100000, "--image-size 100000 is not valid; give an integer from 32 to 1024"),
        ("image_size", 64.0, "--image-size 64.0 is not valid; give an integer from 32 to 1024"),
        ("batch_size", True, "--batch-size True is not valid"),
        ("epochs", -3, "--epochs -3 is not valid; give an integer >= 1"),
        ("tau", float("nan"), "--tau nan is not valid; give a finite number > 0"),
        ("moco_t", -0.2, "--moco-t -0.2 is not valid; give a finite number > 0"),
        ("moco_m", 1.0, "--moco-m 1.0 is not valid; give a finite number >= 0 and < 1"),
        ("nu", "1", "--nu '1' is not valid; give a finite number >= 0"),
        ("val_fraction", 1.5, "--val-fraction 1.5 is not valid; give a finite number >= 0 and < 1"),
        ("cam_detach", "yes", "--cam-detach 'yes' is not valid; give true or false"),
        ("fit_grad", "stem", "--fit-grad 'stem' is not valid; choose one of gfb, backbone"),
        ("fit_form", "kl", "--fit-form 'kl' is not valid; choose one of ours, released, per_image"),
        ("pretrained", None, "--pretrained None is not valid"),
    ],
)
def test_bad_option_is_refused_when_the_config_is_made(field, value, message):
    with pytest.raises(InputError) as err:
        TrainConfig(**{field: value})
    assert message in str(err.value)


def test_a_field_changed_after_construction_is_caught_when_training_starts(synth_root, tmp_path):
    pytest.importorskip("torch")
    from lcr_sdk.train.engine import Trainer

    cfg = TrainConfig(arch="resnet18", image_size=64, batch_size=8)
    cfg.cam_sign = "gradient"  # any value but 'score' used to act as 'loss' silently
    with pytest.raises(InputError, match="--cam-sign 'gradient' is not valid"):
        Trainer(cfg, synth_root, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_defaults_are_valid_and_round_trip_through_a_checkpoint_dict():
    cfg = TrainConfig(arch="resnet18", val_fraction=0.1, val_seed=3)
    again = TrainConfig.from_dict({**cfg.to_dict(), "unknown_future_option": 1})
    assert again == cfg
    old = TrainConfig.from_dict({"arch": "resnet18", "method": "moco", "image_size": 64})  # an older checkpoint
    assert old.val_fraction == 0.0 and old.method == "moco"
    assert (old.fit_grad, old.fit_form) == ("backbone", "ours")  # how LCR trained before those options existed
    assert TrainConfig.from_dict(TrainConfig().to_dict()).fit_form == "per_image"


def test_the_fitting_weight_is_the_forms_own_unless_given():
    assert TrainConfig().fit_weight == 0.01  # the default form, per_image, keeps the released weight
    assert TrainConfig(fit_form="ours").fit_weight == 1.0  # this SDK's earlier form
    assert TrainConfig(fit_form="released").fit_weight == 0.01  # the released code's default
    assert TrainConfig(fit_form="released", nu=0.5).fit_weight == 0.5


def test_on_bad_is_checked_in_one_place():
    from lcr_sdk.train.config import check_on_bad

    check_on_bad("skip")
    with pytest.raises(InputError, match="--on-bad 'ignore' is not valid; choose one of skip, fail"):
        check_on_bad("ignore")
