"""Checkpoints: weights_only loadable, atomic, and clear errors for bad files."""

import pickle

import pytest

from lcr_sdk.errors import ModelError

pytestmark = pytest.mark.torch


def test_weights_only_load_and_rebuild(lcr_checkpoint):
    import torch

    from lcr_sdk.train.checkpoint import load_net

    raw = torch.load(lcr_checkpoint, weights_only=True)
    assert raw["format"] == "lcr-sdk-checkpoint" and raw["config"]["method"] == "lcr"
    net, ckpt = load_net(lcr_checkpoint)
    assert net.num_parts == 8 and not net.training


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable PyTorch checkpoint"),
        (b"garbage" * 100, "not a readable PyTorch checkpoint"),
    ],
)
def test_corrupt_files(tmp_path, content, message):
    from lcr_sdk.train.checkpoint import load_checkpoint

    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_checkpoint(p)


def test_a_model_file_given_as_checkpoint_is_named_for_what_it_is(tmp_path):
    import torch

    from lcr_sdk.train.checkpoint import load_checkpoint

    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x07pytorch")  # how an ONNX protobuf starts; never unpickled
    with pytest.raises(ModelError, match=r"model\.onnx is an ONNX model \(by its name\), not a PyTorch checkpoint"):
        load_checkpoint(onnx_file)
    # a pickle holding a class instance: refused without torch's advice to load it unsafely
    odd = tmp_path / "odd.pt"
    torch.save({"format": "lcr-sdk-checkpoint", "obj": pickle.PickleError("x")}, odd)
    with pytest.raises(ModelError, match="never unpickles") as e:
        load_checkpoint(odd)
    assert "weights_only" not in str(e.value)


def test_truncated_checkpoint(lcr_checkpoint, tmp_path):
    from lcr_sdk.train.checkpoint import load_checkpoint

    p = tmp_path / "cut.pt"
    p.write_bytes(lcr_checkpoint.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_checkpoint(p)


def test_missing_foreign_and_newer(tmp_path, lcr_checkpoint):
    import torch

    from lcr_sdk.train.checkpoint import load_checkpoint

    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "tv.pt")
    with pytest.raises(ModelError, match="not an lcr-sdk checkpoint"):
        load_checkpoint(tmp_path / "tv.pt")
    ckpt = torch.load(lcr_checkpoint, weights_only=True)
    ckpt["format_version"] = 99
    torch.save(ckpt, tmp_path / "new.pt")
    with pytest.raises(ModelError, match="newer than this lcr-sdk"):
        load_checkpoint(tmp_path / "new.pt")


def test_failed_save_keeps_the_previous_file(lcr_checkpoint, tmp_path):
    import torch

    from lcr_sdk.train.checkpoint import load_checkpoint, save_checkpoint

    target = tmp_path / "ckpt.pt"
    save_checkpoint(target, {k: v for k, v in load_checkpoint(lcr_checkpoint).items() if not k.startswith("format")})
    with pytest.raises((AttributeError, TypeError, RuntimeError, pickle.PicklingError)):
        save_checkpoint(target, {"config": {}, "model": {"x": lambda: 0}})  # not picklable: fails mid-write
    assert load_checkpoint(target)["config"] == load_checkpoint(lcr_checkpoint)["config"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    del torch
