"""``python -m lcr_sdk.cli`` (used by ``lcr-sdk train --nproc-per-node`` to launch torchrun workers)."""

from lcr_sdk.cli import main

main()
