"""ID similarity: cosine between recognition embeddings of the largest face in reference and generated images."""

import numpy as np

from .face_analysis import DET_SIZES, FaceAnalyzer, NoFaceError, detect_faces, select_face


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """a.b / (|a| |b|) of two embeddings."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def largest_face_embedding(analyzer: FaceAnalyzer, image: np.ndarray, name: str, det_sizes=DET_SIZES) -> np.ndarray:
    """The recognition embedding of the largest face of an RGB uint8 image (NoFaceError if there is none)."""
    face = select_face(detect_faces(analyzer, image, name, det_sizes), "largest", 0, name)
    return analyzer.embed(image, face)


def reference_identity(analyzer: FaceAnalyzer, references: list[np.ndarray]) -> np.ndarray:
    """The mean of the unit-normalised embeddings of the references' largest faces."""
    embeddings = [largest_face_embedding(analyzer, image, f"reference {i + 1}") for i, image in enumerate(references)]
    return np.mean([e / np.linalg.norm(e) for e in embeddings], axis=0)


def identity_similarities(analyzer: FaceAnalyzer, identity: np.ndarray, images: list[np.ndarray]) -> list[float | None]:
    """Cosine of each image's largest face with ``identity``; None where no face is found."""
    similarities = []
    for i, image in enumerate(images):
        try:
            similarities.append(cosine_similarity(largest_face_embedding(analyzer, image, f"image {i + 1}"), identity))
        except NoFaceError:
            similarities.append(None)
    return similarities
