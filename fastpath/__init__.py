"""Pure-PyTorch fast path for one-step generation: compiled calls replayed as CUDA graphs, cached by key.

Never imports ComfyUI; nodes/fast_path.py adapts a ComfyUI MODEL and VAE to it.
"""
