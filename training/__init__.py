"""Training commands for AdaptBIR's weights that are not public: the restoration VAE (stage I) and CSFT (stage
III). Run through ``train.py`` at the pack root with the Python of the user's ComfyUI; never imported by ComfyUI."""
