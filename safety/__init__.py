"""Safety audit after T2ISafety (Li et al. 2025, arXiv 2501.12612): prompt screening, explicit-image, privacy and
fairness checks, and the teacher-against-student audit loop.

Pure Python + numpy + onnxruntime; never imports ComfyUI. Every check sits behind a small interface
(``ExplicitImageCheck``, ``PromptToxicity``, ``AttributeModel``, the face analyser of ``..pulid``) so that a
stronger local model can be plugged in later. Heavy imports (nudenet, profanity_check, insightface) happen in
the classes that need them.
"""
