"""LCR training (installed as ``lcr_sdk.train``): MoCo v2 + GradCAM Fitting Branch. Needs the ``train`` extra."""
