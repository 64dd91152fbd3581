"""The pairwise forward stores its tile with 32-bit offsets from the tile's corner when they fit
(OFFSETS_I32) and with 64-bit pointers otherwise: both paths write the same distances."""
import pytest
import torch

import vtreid.kernels.pairwise_distance as k_pair
from support import require_backend


def test_int32_offsets_only_where_the_largest_tile_fits():
    def strided(row_stride, col_stride):  # an empty tensor carries any strides, without memory
        return torch.empty(0).as_strided((0, 0), (row_stride, col_stride))
    assert k_pair.tile_offsets_fit_int32(strided(2 ** 24 - 2 ** 17, 1))   # 127 rows of 2^24 - 2^17
    assert not k_pair.tile_offsets_fit_int32(strided(2 ** 25, 1))         # 127 * 2^25 >= 2^31
    assert not k_pair.tile_offsets_fit_int32(strided(1, 2 ** 24))         # 255 * 2^24 along a row


@pytest.mark.parametrize("metric", list(k_pair.METRIC_CODES))
def test_both_store_paths_write_the_same_distances(metric, monkeypatch):
    device = "cuda" if torch.cuda.is_available() else "cpu"   # CPU tensors: the interpreter
    require_backend("triton", device)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(37, 20, generator=g).to(device), torch.randn(45, 20, generator=g).to(device)
    fast = k_pair.forward(x, y, metric, 1e-6)[0]
    monkeypatch.setattr(k_pair, "tile_offsets_fit_int32", lambda t: False)
    wide = k_pair.forward(x, y, metric, 1e-6)[0]
    assert torch.equal(fast, wide)
    assert torch.equal(fast, k_pair.forward(x, y.t().contiguous().t(), metric, 1e-6)[0])
