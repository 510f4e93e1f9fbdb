"""Pure-PyTorch distillation core (SiD, SiD-LSG, SIM) and one-step sampling math. Never imports ComfyUI."""
