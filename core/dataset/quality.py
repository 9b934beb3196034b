"""Quality measures of a face and a photo, as pure functions on arrays (no files, no models).

Per face: size, sharpness (variance of the Laplacian at a fixed face scale), brightness and
clipping of the face region, and head pose from the detector's five keypoints. Per photo: a 64-bit
perceptual hash for near-duplicate detection. :func:`face_problem` turns measures plus
:class:`~lora_likeness.dataset.config.QualityThresholds` into a rejection reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import QualityThresholds

#: Side, in pixels, the face region is resized to before measuring sharpness, so the measure does
#: not depend on the photo's resolution.
SHARPNESS_SIDE = 128
#: Neutral nose height between the eye line (0) and the mouth line (1), and the depth ratio of the
#: pitch model; measured mean over the shared frontal photos.
NEUTRAL_NOSE_HEIGHT = 0.58
PITCH_DEPTH = 0.5


@dataclass(frozen=True)
class FaceMeasures:
    """What the quality filters look at for one face.

    Attributes:
        size_px: larger side of the face box in source pixels.
        sharpness: variance of the Laplacian of the face at 128x128 grey (higher is sharper).
        brightness: mean luminance 0-255 of the face region.
        dark_clipped / bright_clipped: share of face pixels <= 5 / >= 250.
        yaw_deg / pitch_deg / roll_deg: head pose estimated from the keypoints, degrees.
    """

    size_px: float
    sharpness: float
    brightness: float
    dark_clipped: float
    bright_clipped: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float

    def as_dict(self) -> dict:
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


def head_pose(kps: np.ndarray) -> tuple[float, float, float]:
    """Approximate ``(yaw, pitch, roll)`` in degrees from five keypoints ``(5, 2)``.

    Keypoints are insightface's order: left eye, right eye, nose, left and right mouth corner.
    The points are first rotated so the eyes lie level (that angle is the roll). Yaw comes from
    the nose's horizontal offset from the eyes' midpoint in half eye distances, ``atan(offset)``;
    pitch from the nose's height between eye and mouth lines against the neutral 0.58. Both are a
    rough single-camera model, good for telling a profile or a face looking at the sky from a
    usable 3/4 view, not for measurement.
    """
    points = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye = points[0], points[1]
    mouth = (points[3] + points[4]) / 2.0
    roll = math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    cos, sin = math.cos(-roll), math.sin(-roll)
    rotation = np.array([[cos, -sin], [sin, cos]])
    mid = (left_eye + right_eye) / 2.0
    level = (points - mid) @ rotation.T
    half_eyes = max(np.linalg.norm(level[1] - level[0]) / 2.0, 1e-6)
    yaw = math.degrees(math.atan(level[2][0] / half_eyes))
    mouth_level = (mouth - mid) @ rotation.T
    if mouth_level[1] <= 1e-6:  # mouth above the eyes: upside down or a broken detection
        pitch = 90.0
    else:
        ratio = level[2][1] / mouth_level[1]
        pitch = math.degrees(math.atan((ratio - NEUTRAL_NOSE_HEIGHT) / PITCH_DEPTH))
    return yaw, pitch, math.degrees(roll)


def face_region(rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """The ``box`` (x1, y1, x2, y2 in ``rgb``'s pixels) clipped to the image; ``None`` if empty."""
    height, width = rgb.shape[:2]
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return rgb[y1:y2, x1:x2]


def measure_face(rgb: np.ndarray, box: np.ndarray, kps: np.ndarray, scale: float = 1.0) -> FaceMeasures:
    """Measure one face of an ``(H, W, 3)`` uint8 image.

    ``box`` and ``kps`` are in source pixels; ``scale`` is source pixels per ``rgb`` pixel
    (:attr:`LoadedImage.scale`), so the region is read from the decoded array.
    """
    import cv2

    box = np.asarray(box, dtype=np.float64)
    size = float(max(box[2] - box[0], box[3] - box[1]))
    region = face_region(rgb, box / scale)
    yaw, pitch, roll = head_pose(kps)
    if region is None:
        return FaceMeasures(size, 0.0, 0.0, 0.0, 0.0, yaw, pitch, roll)
    grey = cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (SHARPNESS_SIDE, SHARPNESS_SIDE), interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(small, cv2.CV_64F).var())
    return FaceMeasures(
        size_px=size,
        sharpness=sharpness,
        brightness=float(grey.mean()),
        dark_clipped=float((grey <= 5).mean()),
        bright_clipped=float((grey >= 250).mean()),
        yaw_deg=yaw,
        pitch_deg=pitch,
        roll_deg=roll,
    )


def face_problem(measures: FaceMeasures, thresholds: QualityThresholds) -> tuple[str, str] | None:
    """The first quality filter the face fails, as ``(code, sentence)``, or ``None`` if it passes.

    Codes, in the order checked: ``face_too_small``, ``underexposed``, ``overexposed``, ``blurry``,
    ``extreme_pose``. Exposure comes before sharpness because a dark face has little contrast and
    so also measures as blurry.
    """
    t = thresholds
    m = measures
    if m.size_px < t.min_face_px:
        return "face_too_small", f"face too small: {m.size_px:.0f} px < {t.min_face_px:.0f} px"
    if m.brightness < t.min_brightness or m.dark_clipped > t.max_clipped:
        return "underexposed", (
            f"face underexposed: brightness {m.brightness:.0f} (min {t.min_brightness:.0f}), "
            f"{m.dark_clipped:.0%} crushed to black (max {t.max_clipped:.0%})"
        )
    if m.brightness > t.max_brightness or m.bright_clipped > t.max_clipped:
        return "overexposed", (
            f"face overexposed: brightness {m.brightness:.0f} (max {t.max_brightness:.0f}), "
            f"{m.bright_clipped:.0%} blown to white (max {t.max_clipped:.0%})"
        )
    if m.sharpness < t.min_sharpness:
        return "blurry", f"face is blurry: sharpness {m.sharpness:.1f} < {t.min_sharpness:.1f}"
    if abs(m.yaw_deg) > t.max_yaw_deg:
        return "extreme_pose", f"head turned too far: yaw about {abs(m.yaw_deg):.0f} deg > {t.max_yaw_deg:.0f} deg"
    if abs(m.pitch_deg) > t.max_pitch_deg:
        return "extreme_pose", f"head tilted too far: pitch about {abs(m.pitch_deg):.0f} deg > {t.max_pitch_deg:.0f} deg"
    return None


def quality_score(measures: FaceMeasures, thresholds: QualityThresholds, identity_similarity: float, match_threshold: float, size: int) -> float:
    """Rank of a usable face in 0..1 (higher is better); used to keep the best N photos.

    Weighted mean of: resolution (0.30, face size against the ``size / 2`` a close-up needs),
    sharpness (0.25, log scale from the threshold to 8x it), identity (0.20, similarity to the
    subject's mean from the match threshold to 0.8), frontalness (0.15, yaw and pitch against their
    limits) and exposure (0.10, distance of the brightness from mid-grey).
    """
    m = measures
    resolution = min(1.0, m.size_px / (size / 2.0))
    low = math.log(max(thresholds.min_sharpness, 1e-3))
    sharp = float(np.clip((math.log(max(m.sharpness, 1e-3)) - low) / math.log(8.0), 0.0, 1.0))
    identity = float(np.clip((identity_similarity - match_threshold) / max(0.8 - match_threshold, 1e-3), 0.0, 1.0))
    frontal = 1.0 - 0.5 * min(1.0, abs(m.yaw_deg) / max(thresholds.max_yaw_deg, 1e-3)) - 0.5 * min(
        1.0, abs(m.pitch_deg) / max(thresholds.max_pitch_deg, 1e-3)
    )
    exposure = 1.0 - min(1.0, abs(m.brightness - 128.0) / 128.0)
    return 0.30 * resolution + 0.25 * sharp + 0.20 * identity + 0.15 * frontal + 0.10 * exposure


def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of an ``(H, W, 3)`` image.

    The image is reduced to 32x32 grey; the top-left 8x8 DCT coefficients (the coarse structure)
    are compared with their median, one bit each. Resizing, re-encoding and small colour changes
    keep the hash within a few bits; different pictures differ in about half of them.
    """
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    coefficients = cv2.dct(small)[:8, :8].ravel()
    bits = coefficients > np.median(coefficients[1:])  # the DC term would skew the median
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()
