"""Default optimiser settings of the three training stages (no imports: the command line reads them for ``--help``
without ComfyUI)."""

# AdaptBIR's stage-1 config: Adam, betas (0.5, 0.9), base lr 4.5e-6, batch 5, 512 crops
STAGE1_DEFAULTS = {"lr": 4.5e-6, "optimizer": "adam", "betas": (0.5, 0.9), "batch_size": 5, "crop": 512}
# AdaptBIR's stage-3 config: AdamW, lr 1e-5 (the paper says Adam, 1e-4, 20k iterations), 512 crops
STAGE3_DEFAULTS = {"lr": 1e-5, "optimizer": "adamw", "betas": (0.9, 0.999), "batch_size": 4, "crop": 512}
# AdaptBIR's stage-2 config: AdamW, lr 1e-4 (26 per GPU x 4 GPUs x 4 accumulated there), 512 crops
STAGE2_DEFAULTS = {"lr": 1e-4, "optimizer": "adamw", "betas": (0.9, 0.999), "batch_size": 4, "crop": 512}
