"""The face crop and the whole ID pipeline on real photos: YuNet detection, the aligned crop, EVA-CLIP
(timm architecture at width 64, random weights) and the encoders (small widths, random weights).

PuLID's encoders need a 512-d ArcFace embedding (antelopev2's glintr100, not shipped offline); the
pipeline tests use SFace's real 128-d embedding repeated 4 times in its place.
"""


import numpy as np
import pytest
import torch
from face_test_assets import ASTRONAUT, INSIGHTFACE_IMAGES, SFaceAs512, photo
from onestep.pulid.embedding import face_condition, id_tokens, uncond_tokens
from onestep.pulid.encoders import IDEncoder, IDFormer
from onestep.pulid.eva_clip import build_eva02_clip_l14_336
from onestep.pulid.face_analysis import YuNetSFaceAnalyzer, detect_faces, select_face
from onestep.pulid.face_crop import (
    CLIP_MEAN,
    CLIP_STD,
    FFHQ_TEMPLATE_512,
    align_face,
    clip_pixels,
    face_features_image,
    images_to_uint8,
    resize_long_edge,
    whitened_region,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def analyzer():
    return SFaceAs512()


@pytest.fixture(scope="module")
def eva():
    torch.manual_seed(0)
    return build_eva02_clip_l14_336(embed_dim=64, num_heads=4, depth=21)


@pytest.fixture(scope="module")
def photos():
    return [photo(ASTRONAUT), photo(INSIGHTFACE_IMAGES / "Tom_Hanks_54745.png")]


@pytest.fixture(scope="module")
def conditions(photos, analyzer, eva):
    with torch.inference_mode():
        return [face_condition(photo, analyzer, eva, f"photo {i}") for i, photo in enumerate(photos)]


def test_aligned_crop_puts_the_landmarks_on_the_ffhq_template(photos, analyzer):
    astronaut = photos[0]
    face = select_face(detect_faces(analyzer, astronaut, "astronaut.png"))
    crop = align_face(astronaut, face.landmarks)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    eyes = select_face(detect_faces(analyzer, crop, "crop")).landmarks[:2]  # re-detected in the crop
    template_eyes = FFHQ_TEMPLATE_512[:2]
    assert np.linalg.norm(eyes.mean(0) - template_eyes.mean(0)) < 10  # pixels
    eye_distance, template_distance = (np.linalg.norm(e[1] - e[0]) for e in (eyes, template_eyes))
    assert abs(eye_distance / template_distance - 1) < 0.1


def test_parsing_whitens_background_cloth_hat_ears_and_neck():
    labels = torch.arange(19).repeat_interleave(4)[None, None].expand(1, 1, 4, 76)  # every class, 4 columns each
    whitened = whitened_region(labels)[0, 0, 0].reshape(19, 4)[:, 0]
    assert whitened.nonzero().ravel().tolist() == [0, 7, 8, 9, 14, 15, 16, 18]
    logits = torch.nn.functional.one_hot(labels[:, 0], 19).permute(0, 3, 1, 2).float()
    assert torch.equal(whitened_region(logits), whitened_region(labels))
    face = torch.rand(1, 3, 4, 76)
    features = face_features_image(face, labels)
    white = whitened_region(labels).expand_as(features)
    assert torch.all(features[white] == 1)
    gray = 0.299 * face[:, 0] + 0.587 * face[:, 1] + 0.114 * face[:, 2]
    torch.testing.assert_close(features[:, 1][~white[:, 1]], gray[~white[:, 1]])
    assert torch.equal(features[:, 0], features[:, 2])


def test_clip_pixels_and_image_helpers():
    pixels = clip_pixels(torch.ones(1, 3, 512, 512))
    assert pixels.shape == (1, 3, 336, 336)
    torch.testing.assert_close(pixels[0, :, 0, 0], (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
    assert resize_long_edge(np.zeros((886, 1280, 3), np.uint8)).shape == (708, 1024, 3)
    assert resize_long_edge(np.zeros((100, 50, 3), np.uint8)).shape == (100, 50, 3)
    assert images_to_uint8(torch.tensor([[[[0.0, 0.5, 1.0]]]]))[0].tolist() == [[[0, 128, 255]]]


def test_face_condition(conditions, analyzer, photos):
    condition = conditions[0]
    assert condition.id_cond.shape == (1, 1280) and [h.shape for h in condition.vit_hidden] == [(1, 577, 64)] * 5
    face = select_face(detect_faces(analyzer, photos[0], "astronaut"))
    np.testing.assert_allclose(condition.id_cond[0, :512].numpy(), analyzer.embed(photos[0], face), rtol=1e-5)
    torch.testing.assert_close(condition.id_cond[0, 512:].norm(), torch.tensor(1.0))
    assert condition.crop.shape == (512, 512, 3) and condition.features.shape == (1, 3, 512, 512)


def test_parse_callable_whitens_the_crop(photos, analyzer, eva):
    def centre_is_skin(normalised_crop):  # stands in for BiSeNet: labels, skin (1) in the centre, background elsewhere
        labels = torch.zeros(1, 1, *normalised_crop.shape[-2:], dtype=torch.long)
        labels[..., 128:384, 128:384] = 1
        return labels

    with torch.inference_mode():
        condition = face_condition(photos[0], analyzer, eva, parse=centre_is_skin)
    assert torch.all(condition.features[..., :128, :] == 1) and condition.features[..., 200:300, 200:300].lt(1).any()


def test_a_128_d_recognition_model_is_refused(photos, eva):
    with pytest.raises(ValueError, match="512-d ArcFace .* gives 128-d"):
        face_condition(photos[0], YuNetSFaceAnalyzer(), eva)


ENCODERS = {
    "IDFormer": lambda: IDFormer(dim=8, dim_head=4, heads=2, output_dim=16, vit_width=64),
    "IDEncoder": lambda: IDEncoder(context_dim=16, vit_width=64),
}


@pytest.mark.parametrize("kind", ENCODERS)
def test_fusion_of_two_references(conditions, kind):
    torch.manual_seed(0)
    encoder = ENCODERS[kind]().eval()
    with torch.inference_mode():
        each = [encoder(c.id_cond, c.vit_hidden) for c in conditions]
        mean, uncond = id_tokens(encoder, conditions, "mean")
        torch.testing.assert_close(mean, (each[0] + each[1]) / 2)
        zeros = encoder(torch.zeros(1, 1280), [torch.zeros(1, 577, 64)] * 5)
        torch.testing.assert_close(uncond, zeros)
        torch.testing.assert_close(uncond_tokens(encoder, conditions[1]), zeros)
        concat, uncond = id_tokens(encoder, conditions, "concat", id_mix=True)
        torch.testing.assert_close(concat, torch.cat(each, dim=1))
        assert uncond.shape == concat.shape
        joint, _ = id_tokens(encoder, conditions, "joint")
        levels = list(zip(*(c.vit_hidden for c in conditions), strict=True))
        if kind == "IDFormer":  # official v1.1: ID tokens of both references join the latents
            id_cond = torch.stack([c.id_cond for c in conditions], dim=1)
            expected = encoder(id_cond, [torch.cat(level, dim=1) for level in levels])
        else:
            id_cond = (conditions[0].id_cond + conditions[1].id_cond) / 2
            expected = encoder(id_cond, [(a + b) / 2 for a, b in levels])
        torch.testing.assert_close(joint, expected)
        assert joint.shape == each[0].shape
        single, _ = id_tokens(encoder, conditions[:1], "joint")
        torch.testing.assert_close(single, each[0])
    with pytest.raises(ValueError, match="fusion must be one of"):
        id_tokens(encoder, conditions, "sum")


def test_concat_without_id_mix_adds_only_the_id_tokens_of_further_references(conditions):
    """Official v1 app.py (ID Mix off by default): ``cat((first, supp if id_mix else supp[:, :5]), dim=1)``,
    applied to get_id_embedding's uncond and cond together. IDFormer (v1.1, FLUX) has no such option."""
    torch.manual_seed(0)
    encoder = ENCODERS["IDEncoder"]().eval()
    with torch.inference_mode():
        first, second = (encoder(c.id_cond, c.vit_hidden) for c in conditions)
        zeros = encoder(torch.zeros(1, 1280), [torch.zeros(1, 577, 64)] * 5)
        cond, uncond = id_tokens(encoder, conditions, "concat")
        torch.testing.assert_close(cond, torch.cat([first, second[:, :5]], dim=1))
        torch.testing.assert_close(uncond, torch.cat([zeros, zeros[:, :5]], dim=1))
        assert cond.shape == (1, 15, 16)
        mixed, mixed_uncond = id_tokens(encoder, conditions, "concat", id_mix=True)
        torch.testing.assert_close(mixed, torch.cat([first, second], dim=1))
        torch.testing.assert_close(mixed_uncond, torch.cat([zeros, zeros], dim=1))
        former = ENCODERS["IDFormer"]().eval()
        each = [former(c.id_cond, c.vit_hidden) for c in conditions]
        torch.testing.assert_close(id_tokens(former, conditions, "concat")[0], torch.cat(each, dim=1))
