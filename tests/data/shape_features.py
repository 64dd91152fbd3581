"""Hand-crafted cross-modal features for the synthetic-data learnability test: the silhouette's width
profile and its torso texture statistics, from a foreground mask against the image border."""
import numpy as np
import torch
import torch.nn.functional as F

from vtreid.data import load_image


def silhouette_features(path: str, modality: int, bins: int = 32) -> np.ndarray:
    img = load_image(path, modality).float().numpy() / 255.0          # [3, H, W]
    grey = img.mean(0) if modality else img                          # visible keeps colour for the mask
    border = np.concatenate([np.atleast_3d(grey.T if grey.ndim == 2 else grey.transpose(1, 2, 0))[:, :3].reshape(-1, 1 if grey.ndim == 2 else 3),
                             np.atleast_3d(grey.T if grey.ndim == 2 else grey.transpose(1, 2, 0))[:, -3:].reshape(-1, 1 if grey.ndim == 2 else 3)])
    background = np.median(border, axis=0)
    diff = np.abs((grey if grey.ndim == 3 else grey[None]) - background.reshape(-1, 1, 1)).max(0)
    mask = diff > 0.12
    rows = np.where(mask.sum(1) > 1)[0]
    if len(rows) < 4:
        return np.zeros(bins + 1)
    top, bottom = rows[0], rows[-1] + 1
    widths = mask[top:bottom].sum(1).astype(np.float32)
    profile = F.interpolate(torch.tensor(widths)[None, None], size=bins, mode="linear", align_corners=False)[0, 0].numpy()
    profile = profile / max(profile.max(), 1.0)
    return np.concatenate([profile, [mask.sum() / max((bottom - top) ** 2, 1) * 4]])


def rank1(query: np.ndarray, query_ids, gallery: np.ndarray, gallery_ids) -> float:
    q = torch.tensor(query, dtype=torch.float32)
    g = torch.tensor(gallery, dtype=torch.float32)
    nearest = torch.cdist(q, g).argmin(1)
    return float((torch.tensor(gallery_ids)[nearest] == torch.tensor(query_ids)).float().mean())
