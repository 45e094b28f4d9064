"""Image I/O, colour handling and pairing of infrared/visible files."""
from .color import (FLAT_PAIR_SPAN, NEUTRAL_CHROMA, compose_output, is_flat_pair, is_grayscale, luma_and_chroma,
                    merge_chroma, normalize_thermal, stretch_minmax, to_uint8)
from .io import IMAGE_EXTENSIONS, read_image, write_image
from .pairs import LoadedPair, PairScan, list_images, load_pair, scan_pairs

__all__ = [
    "FLAT_PAIR_SPAN", "NEUTRAL_CHROMA", "compose_output", "is_flat_pair", "is_grayscale", "luma_and_chroma", "merge_chroma",
    "normalize_thermal", "stretch_minmax", "to_uint8", "IMAGE_EXTENSIONS", "read_image", "write_image",
    "LoadedPair", "PairScan", "list_images", "load_pair", "scan_pairs",
]
