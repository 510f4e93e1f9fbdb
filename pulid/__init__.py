"""PuLID core: face analysis, the face crop, EVA-CLIP features, ID encoders, weight files and the injection math.

Pure PyTorch + onnxruntime; never imports ComfyUI. Heavy optional imports (insightface, timm) happen in
the modules that need them.
"""
