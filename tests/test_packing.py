"""qexp.kernels.packing: the packed K order of gluon_rs's PACKED config, against its defining index formula."""
import pytest
import torch

from qexp.kernels.packing import pack_k64, unpack_k64


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_packed_order_puts_a_threads_wgmma_fragments_in_16_contiguous_bytes(dtype):
    """Packed position 16 t + 4 j + 2 h + b of every 64-wide block holds K 16 j + 8 h + 2 t + b: thread t's A
    fragment of k16 step j (K 2t, 2t+1, 2t+8, 2t+9 of the step) at bytes 16 t + 4 j ... + 3."""
    w = torch.randint(-128, 128, (3, 192), generator=torch.Generator().manual_seed(0), dtype=torch.int8).view(dtype)
    p = pack_k64(w)
    assert p.dtype == dtype and p.shape == w.shape and p.is_contiguous()
    wb, pb = w.view(torch.uint8), p.view(torch.uint8)
    for c in range(3):
        for t in range(4):
            for j in range(4):
                step = [64 * c + 16 * j + k for k in (2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9)]
                assert torch.equal(pb[:, 64 * c + 16 * t + 4 * j:][:, :4], wb[:, step])
    assert torch.equal(unpack_k64(p).view(torch.uint8), wb)


def test_packing_needs_whole_64_wide_blocks():
    with pytest.raises(ValueError, match="K % 64"):
        pack_k64(torch.zeros(2, 96, dtype=torch.int8))
