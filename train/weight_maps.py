"""PNG panels of G's IR weight w_ir on fixed samples (like the paper's Fig. 5), one per epoch."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

import matplotlib

matplotlib.use("Agg")  # files only; training machines have no display
import matplotlib.pyplot as plt  # noqa: E402


def _gray(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().squeeze().clamp(0, 1).numpy()


def save_weight_maps(path: str | Path, ir: torch.Tensor, vis: torch.Tensor, w_ir: torch.Tensor,
                     fused: torch.Tensor | None = None, title: str = "",
                     outlines: Sequence[np.ndarray | None] | None = None) -> Path:
    """One row per sample: IR, visible, w_ir (0 = all visible, 1 = all IR), fused; all B×1×H×W in [0, 1].

    ``outlines``: optional boolean H×W masks per row, drawn as contours on the w_ir panel
    (e.g. the IR-only objects of the synthetic scenes).
    """
    n = ir.shape[0]
    cols = 4 if fused is not None else 3
    aspect = ir.shape[-1] / ir.shape[-2]
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * aspect * cols + 0.8, 2.2 * n + 0.6), squeeze=False,
                             layout="constrained")
    heads = ["infrared", "visible (Y)", "w_ir from G", "fused"][:cols]
    for r in range(n):
        panels = [_gray(ir[r]), _gray(vis[r]), _gray(w_ir[r])] + ([_gray(fused[r])] if fused is not None else [])
        for c, img in enumerate(panels):
            ax = axes[r][c]
            if c == 2:
                im = ax.imshow(img, cmap="magma", vmin=0.0, vmax=1.0)
                label = f"mean {img.mean():.2f}"
                if outlines is not None and outlines[r] is not None and np.asarray(outlines[r]).any():
                    m = np.asarray(outlines[r], dtype=bool)
                    ax.contour(m.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
                    label += f", inside outline {img[m].mean():.2f}"
                ax.set_xlabel(label, fontsize=7)
            else:
                ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9)
    fig.colorbar(im, ax=axes[:, -1].tolist(), fraction=0.04, pad=0.02, label="w_ir")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
