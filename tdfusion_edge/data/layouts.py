"""Folder layouts of the distributed datasets: where the IR, visible and label files of a split live.

Every folder is a template relative to the dataset root; ``{split}`` is replaced by the split name
given in the dataset YAML (``train``, ``test``, ...). A YAML may override any folder with a
``folders:`` mapping, so a re-organised copy of a dataset needs no code change.

| layout | IR | visible | labels | label kind | classes (default) |
|---|---|---|---|---|---|
| msrs  | {split}/ir       | {split}/vi      | {split}/Segmentation_labels | png masks | 9 (unlabelled, car, person, bike, curve, car_stop, guardrail, color_cone, bump) |
| fmb   | {split}/Infrared | {split}/Visible | {split}/Label               | png masks | 15 (background + 14) |
| m3fd  | Ir               | Vis             | Annotation                  | VOC xml   | 6 (People, Car, Bus, Motorcycle, Lamp, Truck) |
| llvip | infrared/{split} | visible/{split} | Annotations                 | VOC xml   | 1 (person) |
| paired| {split}/ir       | {split}/vis     | {split}/masks or {split}/labels | png masks / YOLO txt | from the YAML |

MSRS (github.com/Linfeng-Tang/MSRS) ships ``train/`` and ``test/``; FMB (SegMiF) ``train/`` and
``test/`` (plus ``color/`` visualisations, unused); M3FD (TarDAL) one flat folder of 4200 pairs with
no official detection split; LLVIP ``train/`` and ``test/`` image folders with one shared
``Annotations/`` folder. In ``paired`` a missing ``{split}`` folder falls back to the root itself,
``vi/`` is accepted for ``vis/``, and without a label folder the samples are fusion-only; its task
view defaults to 256×320 (set ``task_size``). Files pair by stem, whatever their image suffix.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

# Label kinds: "mask" (single-channel png of class ids), "voc" (Pascal VOC xml), "yolo" (txt lines
# "class xc yc w h", normalised), "none" (fusion only).
LABEL_KINDS = ("mask", "voc", "yolo", "none")


@dataclass(frozen=True)
class Layout:
    """Folder templates of one dataset layout and the kind of its label files."""

    ir: str
    vis: str
    label: str | None
    label_kind: str
    task: str  # the task the dataset's labels serve: "seg" or "det"
    task_size: tuple[int, int]  # (height, width) the task view is resized to, as in the released code
    names: tuple[str, ...] = ()

    def with_folders(self, **folders: str) -> "Layout":
        """A copy with some folder templates (``ir``, ``vis``, ``label``) or ``label_kind`` replaced."""
        return replace(self, **{k: v for k, v in folders.items() if v is not None})


MSRS_NAMES = ("unlabelled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone", "bump")
FMB_NAMES = ("background", "road", "sidewalk", "building", "lamp", "sign", "vegetation", "sky",
             "person", "car", "truck", "bus", "motorcycle", "bicycle", "pole")
M3FD_NAMES = ("People", "Car", "Bus", "Motorcycle", "Lamp", "Truck")
LLVIP_NAMES = ("person",)

LAYOUTS: dict[str, Layout] = {
    "msrs": Layout("{split}/ir", "{split}/vi", "{split}/Segmentation_labels", "mask", "seg", (240, 320), MSRS_NAMES),
    "fmb": Layout("{split}/Infrared", "{split}/Visible", "{split}/Label", "mask", "seg", (300, 400), FMB_NAMES),
    "m3fd": Layout("Ir", "Vis", "Annotation", "voc", "det", (192, 256), M3FD_NAMES),
    "llvip": Layout("infrared/{split}", "visible/{split}", "Annotations", "voc", "det", (256, 320), LLVIP_NAMES),
    # label kind and folder of "paired" are decided per dataset: masks/ for seg, labels/ (YOLO txt) for det
    "paired": Layout("{split}/ir", "{split}/vis", None, "none", "seg", (256, 320)),
}

# Sub-folder names the "paired" layout looks for, by task.
PAIRED_LABEL_FOLDERS = {"seg": ("{split}/masks", "mask"), "det": ("{split}/labels", "yolo")}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def get_layout(name: str) -> Layout:
    """The layout registered under ``name`` (case-insensitive)."""
    from tdfusion_edge.errors import TDFusionError

    key = name.lower()
    if key not in LAYOUTS:
        raise TDFusionError(f"unknown dataset layout {name!r}; known: {', '.join(sorted(LAYOUTS))}, synthetic")
    return LAYOUTS[key]
