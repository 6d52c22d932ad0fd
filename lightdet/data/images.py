"""Reading image files: a cheap header check for the scan, and decoding to RGB with EXIF orientation applied."""
import io

import numpy as np
from PIL import Image

# EXIF orientation tag -> the transpose that shows the image upright (what ImageOps.exif_transpose does).
ORIENTATIONS = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
                6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}
MIN_SIDE = 10   # smaller images are almost certainly broken files (ultralytics uses the same limit)


def check_image(path):
    """Read the header of one image: (height, width upright, EXIF orientation, PIL mode). Raises ValueError.

    Reads headers only, except for JPEGs that do not end with the end-of-image marker: those are decoded in
    full, because a truncated JPEG opens fine and only fails (mid-epoch) when decoded.
    """
    try:
        with Image.open(path) as image:
            image.verify()   # PNG: checks the chunk CRCs; most other formats: nothing more than open()
        with Image.open(path) as image:   # verify() leaves the image unusable: open it again for the header
            width, height, mode, fmt = *image.size, image.mode, image.format
            # EXIF comes with the header in these formats (a PNG would be decoded in full to find it).
            orientation = image.getexif().get(0x0112, 1) if fmt in ("JPEG", "MPO", "TIFF", "WEBP") else 1
        if fmt in ("JPEG", "MPO"):
            with open(path, "rb") as f:
                f.seek(-2, io.SEEK_END)
                complete = f.read() == b"\xff\xd9"
            if not complete:   # truncated, or harmless bytes after the end marker: decoding tells which
                with Image.open(path) as image:
                    image.load()
    except Exception as e:   # PIL raises many types (OSError, SyntaxError, struct.error, ...) for broken files
        raise ValueError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{path}: image too small ({width}x{height})")
    return height, width, orientation, mode


def to_rgb(image):
    """Any PIL mode to 8-bit RGB: greyscale and palettes expanded, alpha dropped, 16-bit scaled to 8-bit."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):   # 16-bit ("I;16*") or 32-bit integer greyscale: keep the high byte
        pixels = np.asarray(image).astype(np.int64)
        image = Image.fromarray((np.clip(pixels, 0, 65535) >> 8).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")   # the palette's transparency goes through RGBA without a warning
    return image.convert("RGB")


def read_image(path, orientation=1, draft_size=None):
    """Decode `path` to an upright RGB PIL image.

    `draft_size` (width, height upright): when given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the
    decoder, much faster) as long as the result stays at least that large.
    """
    with open(path, "rb") as f:   # read the bytes ourselves: no file handle outlives this call
        image = Image.open(io.BytesIO(f.read()))
    if draft_size is not None and image.format == "JPEG":
        w, h = draft_size if orientation not in (5, 6, 7, 8) else draft_size[::-1]
        image.draft(image.mode, (int(w), int(h)))
    image.load()   # decode here, so that a broken file fails inside this call
    image = to_rgb(image)
    if orientation in ORIENTATIONS:
        image = image.transpose(ORIENTATIONS[orientation])
    return image
