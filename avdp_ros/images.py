"""ROS image messages -> (H, W, 3) uint8 RGB for the model (pure; no rclpy).

The ONE conversion used by the bag converter (training data) and the live policy node, so the
model sees at run time exactly the pixels it was trained on: same colour handling, same resize
(``cv2.INTER_AREA``). Messages are duck-typed: rosbags messages (``data`` a numpy array) and
rclpy messages (``data`` an ``array.array`` or ``bytes``) both work.

- ``to_rgb``: sensor_msgs/Image in ``rgb8, bgr8, rgba8, bgra8, mono8``; padded rows are cropped.
  The same in two halves: ``raw_pixels`` (the checks, a view) and ``pixels_to_rgb`` (the work).
- ``decode_compressed``: sensor_msgs/CompressedImage, jpeg or png, with ``format`` written the
  way image_transport / realsense-ros write it (``"jpeg"``, ``"rgb8; jpeg compressed bgr8"``).

Both raise ``ImageError`` (a ValueError) naming what was wrong and what was expected.
"""

from __future__ import annotations

import cv2
import numpy as np

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_TO_RGB = {  # cv2 colour conversion per encoding; None = already RGB
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
}
COMPRESSED_CODECS = ("jpeg", "png")
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
_JPEG_END = b"\xff\xd9"


class ImageError(ValueError):
    """An image message that cannot become a model input; the message says what was expected."""


def to_rgb(msg, size: tuple[int, int] | None = None, *,
           expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, a fresh array (never a view of ``msg.data``).

    Args:
        msg: anything with ``height, width, encoding, step, data`` (8-bit encodings only, so
            ``is_bigendian`` does not matter).
        size: (height, width) to resize to with ``cv2.INTER_AREA``; None keeps the input size.
        expect_size: when set, (height, width) the input must have (a strict deployment that
            wants to know when a camera is configured differently than in training).
    """
    return pixels_to_rgb(raw_pixels(msg, expect_size=expect_size), msg.encoding, size)


def raw_pixels(msg, *, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Every check of ``to_rgb``, without its work: the (H, W, channels) pixels of a
    sensor_msgs/Image as a view of ``msg.data`` (padding cut off, no copy). The policy node checks
    each frame as it arrives and converts only the frames an observation uses (``pixels_to_rgb``)."""
    enc = msg.encoding
    if enc not in SUPPORTED_ENCODINGS:
        raise ImageError(f"image encoding {enc!r}: expected one of {', '.join(SUPPORTED_ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"image {w}x{h} {enc}: expected a positive width and height")
    _check_input_size((h, w), expect_size)
    nchan = CHANNELS[enc]
    row = w * nchan
    buf = _as_bytes(msg.data)
    if step < row:
        raise ImageError(f"image {w}x{h} {enc}: step {step} too small "
                         f"(expected step >= {row} = width * {nchan} channels)")
    if buf.size < step * h:
        raise ImageError(f"image {w}x{h} {enc}: {buf.size} data bytes, truncated "
                         f"(expected >= step * height = {step} * {h} = {step * h})")
    return buf[: step * h].reshape(h, step)[:, :row].reshape(h, w, nchan)


def pixels_to_rgb(pixels: np.ndarray, encoding: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """``raw_pixels``' view in ``encoding`` -> (H, W, 3) uint8 RGB, resized to `size`, a fresh array."""
    code = _TO_RGB[encoding]
    img = cv2.cvtColor(pixels, code) if code is not None else pixels.copy()
    return _resize(img, size)


def decode_compressed(msg, size: tuple[int, int] | None = None, *,
                      expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB.

    ``format`` may be a bare codec (``"jpeg"``, ``"png"``) or image_transport's
    ``"<original encoding>; <codec> compressed <payload encoding>"``. As in image_transport's
    decoder, the decoded pixels are in the payload order: BGR unless it says ``rgb``.

    Args:
        msg: anything with ``format`` and ``data``.
        size, expect_size: as in ``to_rgb``.
    """
    fmt = str(msg.format)
    codec, payload_rgb = _parse_format(fmt)
    buf = _as_bytes(msg.data)
    if buf.size == 0:
        raise ImageError(f"compressed image ({fmt!r}): no data, expected {codec} bytes")
    head = buf[: len(_MAGIC[codec])].tobytes()
    if head != _MAGIC[codec]:
        raise ImageError(f"compressed image ({fmt!r}): data starts with {head.hex(' ')}, "
                         f"expected a {codec} header ({_MAGIC[codec].hex(' ')})")
    # libjpeg decodes a cut-off jpeg into a half-grey image without failing: check the end marker
    if codec == "jpeg" and not buf[-64:].tobytes().rstrip(b"\x00").endswith(_JPEG_END):
        raise ImageError(f"compressed image ({fmt!r}): {buf.size} bytes without the jpeg end marker "
                         "(expected a complete jpeg ending in ff d9; truncated?)")
    try:
        # UNCHANGED: keep the channel count and ignore EXIF rotation (camera data is never rotated)
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise ImageError(f"compressed image ({fmt!r}): {codec} decoder failed ({err}), "
                         f"expected valid {codec} data") from err
    if img is None:
        raise ImageError(f"compressed image ({fmt!r}): {buf.size} bytes are not a decodable {codec}, "
                         f"expected valid {codec} data")
    if img.dtype != np.uint8:
        raise ImageError(f"compressed image ({fmt!r}): {img.dtype} pixels, expected 8-bit colour or mono")
    _check_input_size(img.shape[:2], expect_size)
    nchan = 1 if img.ndim == 2 else img.shape[2]
    if nchan == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif nchan == 3:
        img = img.copy() if payload_rgb else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif nchan == 4:
        img = cv2.cvtColor(img, cv2.COLOR_RGBA2RGB if payload_rgb else cv2.COLOR_BGRA2RGB)
    else:
        raise ImageError(f"compressed image ({fmt!r}): {nchan} channels, expected 1, 3 or 4")
    return _resize(img, size)


def _parse_format(fmt: str) -> tuple[str, bool]:
    """-> (codec, payload is RGB-ordered). Rejects depth and unknown codecs."""
    low = fmt.lower()
    expected = f"expected {' or '.join(COMPRESSED_CODECS)} (e.g. 'jpeg' or 'rgb8; jpeg compressed bgr8')"
    if "compresseddepth" in low:
        raise ImageError(f"compressed image format {fmt!r} is a depth image: {expected}")
    original, _, rest = low.rpartition(";") if ";" in low else ("", "", low)
    words = rest.replace("jpg", "jpeg").split()
    codecs = [c for c in COMPRESSED_CODECS if c in words]
    if len(codecs) != 1:
        raise ImageError(f"compressed image format {fmt!r}: {expected}")
    original = original.strip()
    if original and original not in SUPPORTED_ENCODINGS:
        raise ImageError(f"compressed image format {fmt!r}: original encoding {original!r}, "
                         f"expected one of {', '.join(SUPPORTED_ENCODINGS)}")
    # image_transport: "... compressed rgb8" means the encoder was fed RGB-ordered pixels; a bare
    # codec or "compressed bgr8" means BGR, which is what cv2.imdecode hands back for a normal file
    after = words[words.index("compressed") + 1:] if "compressed" in words else []
    return codecs[0], bool(after) and after[0].startswith("rgb")


def _as_bytes(data) -> np.ndarray:
    """Message ``data`` (numpy array, array.array, bytes, list) -> flat uint8 array without a copy."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def _check_input_size(hw: tuple[int, int], expect_size: tuple[int, int] | None) -> None:
    if expect_size is not None and tuple(int(v) for v in hw) != tuple(int(v) for v in expect_size):
        raise ImageError(f"image size {hw[0]}x{hw[1]} (height x width): expected "
                         f"{expect_size[0]}x{expect_size[1]} (expect_size is set, so other sizes are rejected)")


def _resize(img: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is not None:
        h, w = (int(v) for v in size)
        if h <= 0 or w <= 0:
            raise ValueError(f"size={size}: expected positive (height, width)")
        if img.shape[:2] != (h, w):
            # INTER_AREA: averages when shrinking (no aliasing); the converter uses it for training
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, dtype=np.uint8)


def check_crop(crop, what: str = "crop") -> tuple[float, float, float, float]:
    """(top, left, height, width) as fractions of the frame, validated; returned as floats."""
    try:
        top, left, h, w = (float(v) for v in crop)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={crop!r}: expected 4 numbers (top, left, height, width) as fractions "
                         "of the frame") from None
    if not (0.0 <= top and 0.0 <= left and 0.0 < h and 0.0 < w and top + h <= 1.0 + 1e-9
            and left + w <= 1.0 + 1e-9):
        raise ValueError(f"{what}=({top}, {left}, {h}, {w}): expected a box inside the frame, fractions with "
                         "top, left >= 0, height, width > 0, top + height <= 1, left + width <= 1")
    return top, left, h, w


def crop_box(height: int, width: int, crop) -> tuple[int, int, int, int]:
    """Pixel rows/columns (y0, y1, x0, x1) of a fractional crop in a (height, width) frame.

    The one rounding rule for training, caching and every inference backend (torch, numpy/ONNX),
    so a region of interest cuts the same pixels everywhere; at least one pixel each way.
    """
    top, left, h, w = check_crop(crop)
    y0, x0 = min(int(round(top * height)), height - 1), min(int(round(left * width)), width - 1)
    y1 = max(min(int(round((top + h) * height)), height), y0 + 1)
    x1 = max(min(int(round((left + w) * width)), width), x0 + 1)
    return y0, y1, x0, x1
