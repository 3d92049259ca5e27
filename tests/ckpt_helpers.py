"""Real lcr-sdk checkpoints for tests (importable from any test folder as ``ckpt_helpers``)."""

from __future__ import annotations

from pathlib import Path


def make_checkpoint(
    path: Path, method: str = "lcr", arch: str = "resnet18", image_size: int = 64, num_parts: int = 8, seed: int = 0
) -> Path:
    """Write a real lcr-sdk checkpoint of a random-init network whose BN statistics came from real batches."""
    import torch

    from lcr_sdk.train.checkpoint import save_checkpoint
    from lcr_sdk.train.model import LCRNet

    torch.manual_seed(seed)
    net = LCRNet(arch, method, num_parts)
    net.train()
    with torch.no_grad():
        for _ in range(3):  # give BN running stats realistic values
            f = net.features(torch.randn(8, 3, image_size, image_size))
            net.parts(f)
    net.eval()
    config = {"arch": arch, "method": method, "num_parts": num_parts, "image_size": image_size, "seed": seed}
    return save_checkpoint(path, {"config": config, "model": net.state_dict()})
