"""ComfyUI adapters of the pack (V3 schema). The only place, with the root __init__, that imports ComfyUI."""
# ruff: noqa: E402  (the host is checked before the node modules import it)

from .host_check import check_host

check_host()  # an unsuitable ComfyUI fails here, with its version and what it lacks, before any node imports

from comfy_api.latest import ComfyExtension, io

from .distill_trainer import (
    OneStepDistillConfig,
    OneStepDistillTrainer,
    OneStepExportTrainingJob,
    OneStepPromptSource,
)
from .fast_path import OneStepFastDecode, OneStepFastPath
from .fmnist_eval import OneStepFDFMNIST
from .pack_models import OneStepClassLabel, OneStepLoadPackModel, OneStepPixelsToImage
from .pulid_apply import ApplyPuLID, ApplyPuLIDFlux
from .pulid_embed import IDSimilarity, PuLIDEmbedFace
from .pulid_loaders import PuLIDEvaClipLoader, PuLIDFaceAnalysisLoader, PuLIDFaceParsingLoader, PuLIDModelLoader
from .safety import OneStepProtectedIdentities, OneStepSafetyAudit, OneStepSafetyCheck, OneStepSafetyPromptGate
from .sampling import OneStepGenerate, OneStepSampler, OneStepSigmas
from .students import OneStepLoadStudent, OneStepSaveStudent

NODES: list[type[io.ComfyNode]] = [
    OneStepSampler, OneStepSigmas, OneStepGenerate, OneStepLoadStudent, OneStepFastPath, OneStepFastDecode,
    OneStepLoadPackModel, OneStepClassLabel, OneStepPixelsToImage,
    OneStepDistillConfig, OneStepPromptSource, OneStepDistillTrainer, OneStepSaveStudent, OneStepExportTrainingJob,
    OneStepFDFMNIST,
    OneStepSafetyPromptGate, OneStepSafetyCheck, OneStepSafetyAudit, OneStepProtectedIdentities,
    PuLIDModelLoader, PuLIDFaceAnalysisLoader, PuLIDEvaClipLoader, PuLIDFaceParsingLoader, PuLIDEmbedFace,
    ApplyPuLID, ApplyPuLIDFlux, IDSimilarity,
]


class OneStepExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
