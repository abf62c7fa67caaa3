"""Image messages -> model RGB (avdp_ros.images): every encoding, padding, compression, errors."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from avdp_ros.data.convert import ConversionError, image_to_rgb
from avdp_ros.images import SUPPORTED_ENCODINGS, ImageError, decode_compressed, to_rgb

H, W = 4, 6


def pattern(h: int = H, w: int = W) -> np.ndarray:
    """(h, w, 3) RGB where every pixel and channel differs, so swaps and shifts show."""
    y, x = np.mgrid[:h, :w]
    return np.stack([10 * y + x, 100 + 3 * x, 250 - 7 * y], -1).astype(np.uint8)


def encode(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """RGB -> the pixel layout of `encoding`, (h, w, channels)."""
    alpha = np.full(rgb.shape[:2] + (1,), 77, np.uint8)  # must not leak into the output
    return {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], -1),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], -1),
        "mono8": rgb[..., :1],
    }[encoding]


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, data_as: str = "numpy") -> SimpleNamespace:
    """A sensor_msgs/Image stand-in; `pad` bytes of 0xff end every row; data as rosbags or rclpy has it."""
    h, w, c = pixels.shape
    rows = np.full((h, w * c + pad), 255, np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    flat = rows.reshape(-1)
    data = {"numpy": flat, "bytes": flat.tobytes(), "array": array.array("B", flat.tobytes())}[data_as]
    return SimpleNamespace(header=None, height=h, width=w, encoding=encoding, is_bigendian=0,
                           step=w * c + pad, data=data)


def expected_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    return np.repeat(rgb[..., :1], 3, axis=-1) if encoding == "mono8" else rgb


@pytest.mark.parametrize("data_as", ["numpy", "bytes", "array"])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_every_encoding_round_trips(encoding: str, pad: int, data_as: str):
    rgb = pattern()
    img = to_rgb(image_msg(encode(rgb, encoding), encoding, pad, data_as))
    assert img.dtype == np.uint8 and img.shape == (H, W, 3) and img.flags.c_contiguous
    assert np.array_equal(img, expected_rgb(rgb, encoding))


def test_mono8_is_gray_rgb():
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W, 1) * 9
    img = to_rgb(image_msg(gray, "mono8"))
    assert np.array_equal(img[..., 0], gray[..., 0])
    assert np.array_equal(img[..., 1], img[..., 0]) and np.array_equal(img[..., 2], img[..., 0])


def test_output_does_not_alias_the_message():
    msg = image_msg(pattern(), "rgb8")
    img = to_rgb(msg)
    msg.data[:] = 0  # rclpy may reuse buffers; the buffered frame must not change with them
    assert np.array_equal(img, pattern())


def test_resize_to_model_size_uses_inter_area():
    rgb = pattern(8, 12)
    img = to_rgb(image_msg(encode(rgb, "bgr8"), "bgr8"), (4, 6))
    assert img.shape == (4, 6, 3)
    assert np.array_equal(img, cv2.resize(rgb, (6, 4), interpolation=cv2.INTER_AREA))
    # a 2x2 checker of 0 / 200 averages to 100 (INTER_AREA; nearest would keep 0 or 200)
    checker = np.zeros((8, 8, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 200
    assert np.all(to_rgb(image_msg(checker, "rgb8"), (4, 4)) == 100)


def test_expect_size_rejects_other_sizes():
    msg = image_msg(pattern(), "rgb8")
    assert to_rgb(msg, (2, 3), expect_size=(H, W)).shape == (2, 3, 3)
    with pytest.raises(ImageError, match=rf"image size {H}x{W} \(height x width\): expected 480x640"):
        to_rgb(msg, (2, 3), expect_size=(480, 640))


def test_wrong_encoding_names_the_supported_ones():
    msg = image_msg(np.zeros((H, W, 2), np.uint8), "yuv422")
    with pytest.raises(ImageError) as err:
        to_rgb(msg)
    assert "'yuv422'" in str(err.value) and "expected one of rgb8, bgr8, rgba8, bgra8, mono8" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_too_small_step():
    msg = image_msg(pattern(), "rgb8")
    msg.step = W * 3 - 1
    with pytest.raises(ImageError, match=rf"step {W * 3 - 1} too small \(expected step >= {W * 3} = width \* 3"):
        to_rgb(msg)


@pytest.mark.parametrize("data_as", ["numpy", "bytes"])
def test_truncated_data(data_as: str):
    msg = image_msg(encode(pattern(), "bgra8"), "bgra8", pad=2, data_as=data_as)
    msg.data = msg.data[:-1]
    step = W * 4 + 2
    with pytest.raises(ImageError, match=rf"{H * step - 1} data bytes, truncated \(expected >= step \* height "
                                         rf"= {step} \* {H} = {H * step}\)"):
        to_rgb(msg)


def test_zero_size():
    msg = image_msg(pattern(), "rgb8")
    msg.height = 0
    with pytest.raises(ImageError, match="expected a positive width and height"):
        to_rgb(msg)


def test_converter_uses_the_same_conversion():
    msg = image_msg(encode(pattern(8, 12), "rgba8"), "rgba8", pad=4)
    assert np.array_equal(image_to_rgb(msg, "b", "/cam", (4, 6)), to_rgb(msg, (4, 6)))
    msg.encoding = "16UC1"
    with pytest.raises(ConversionError) as err:
        image_to_rgb(msg, "bag0", "/cam", (4, 6))
    assert str(err.value) == f"bag bag0: topic /cam: {_image_error(msg)}"
    assert err.value.topic == "/cam" and err.value.bag == "bag0"


def _image_error(msg) -> str:
    with pytest.raises(ImageError) as err:
        to_rgb(msg)
    return str(err.value)


# ------------------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage


def blocks() -> np.ndarray:
    """16x24 RGB in flat colour blocks (jpeg keeps flat areas nearly exact): red | green | blue."""
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :8] = (220, 20, 20)
    rgb[:, 8:16] = (20, 220, 20)
    rgb[:, 16:] = (20, 20, 220)
    return rgb


def compressed(array_for_cv2: np.ndarray, ext: str, fmt: str) -> SimpleNamespace:
    ok, buf = cv2.imencode(ext, array_for_cv2)
    assert ok
    return SimpleNamespace(header=None, format=fmt, data=array.array("B", buf.tobytes()))


@pytest.mark.parametrize("fmt", ["jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"])
def test_jpeg_decodes_to_rgb(fmt: str):
    rgb = blocks()
    img = decode_compressed(compressed(rgb[..., ::-1], ".jpg", fmt))  # cv2 encodes BGR arrays
    assert img.shape == rgb.shape and img.dtype == np.uint8
    assert np.abs(img[2:-2, [2, 5, 10, 13, 18, 21]].astype(int) - rgb[2:-2, [2, 5, 10, 13, 18, 21]]).max() <= 6


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed bgr8", "bgr8; png compressed bgr8"])
def test_png_decodes_exactly(fmt: str):
    rgb = pattern(16, 24)
    assert np.array_equal(decode_compressed(compressed(rgb[..., ::-1], ".png", fmt)), rgb)


def test_payload_encoded_from_rgb_pixels():
    # image_transport: "compressed rgb8" means the encoder was handed RGB-ordered pixels as they are
    rgb = pattern(16, 24)
    assert np.array_equal(decode_compressed(compressed(rgb, ".png", "rgb8; png compressed rgb8")), rgb)


def test_png_mono_and_alpha():
    gray = pattern(16, 24)[..., 0]
    img = decode_compressed(compressed(gray, ".png", "mono8; png compressed "))
    assert np.array_equal(img, np.repeat(gray[..., None], 3, -1))
    rgb = pattern(16, 24)
    bgra = np.concatenate([rgb[..., ::-1], np.full((16, 24, 1), 9, np.uint8)], -1)
    assert np.array_equal(decode_compressed(compressed(bgra, ".png", "bgra8; png compressed bgra8")), rgb)


def test_compressed_resize_and_expect_size():
    rgb = pattern(16, 24)
    msg = compressed(rgb[..., ::-1], ".png", "png")
    assert np.array_equal(decode_compressed(msg, (8, 12)), cv2.resize(rgb, (12, 8), interpolation=cv2.INTER_AREA))
    with pytest.raises(ImageError, match="image size 16x24 .*expected 480x640"):
        decode_compressed(msg, (8, 12), expect_size=(480, 640))


def _jpeg() -> bytes:
    return bytes(compressed(blocks(), ".jpg", "jpeg").data)


@pytest.mark.parametrize(
    "fmt, data, expected",
    [
        ("jpeg", _jpeg()[:3] + b"\0" * 100 + b"\xff\xd9", "not a decodable jpeg, expected valid jpeg data"),
        ("jpeg", _jpeg()[: len(_jpeg()) // 2], "without the jpeg end marker (expected a complete jpeg"),
        ("jpeg", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "expected a jpeg header (ff d8 ff)"),
        ("png", _jpeg(), "expected a png header"),
        ("png", bytes(compressed(blocks(), ".png", "png").data)[:60], "not a decodable png, expected valid png"),
        ("jpeg", b"", "no data, expected jpeg bytes"),
        ("h264", _jpeg(), "format 'h264': expected jpeg or png"),
        ("", _jpeg(), "format '': expected jpeg or png"),
        ("16UC1; compressedDepth png", _jpeg(), "is a depth image: expected jpeg or png"),
        ("16UC1; png compressed ", _jpeg(), "original encoding '16uc1', expected one of rgb8"),
    ],
    ids=["corrupt", "truncated", "png-as-jpeg", "jpeg-as-png", "truncated-png", "empty", "h264", "no-format",
         "depth", "16-bit"],
)
def test_bad_compressed_images(fmt: str, data: bytes, expected: str):
    with pytest.raises(ImageError) as err:
        decode_compressed(SimpleNamespace(format=fmt, data=data))
    assert expected in str(err.value)
