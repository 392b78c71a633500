"""The channels-last callback: a layout change only (same numbers, same parameter objects)."""

from __future__ import annotations

import copy

import lightning as L
import torch
from torch import nn

from genlab.callbacks.memory import ChannelsLast
from genlab.families.gan.nets import DCGANDiscriminator, DCGANGenerator, add_spectral_norm


class _Nets(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.g = DCGANGenerator(8, (1, 28, 28), channels=4)
        self.d = add_spectral_norm(DCGANDiscriminator((1, 28, 28), channels=4))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.d(torch.tanh(self.g(z)))


def _conv_weights(m: nn.Module) -> list[torch.Tensor]:
    return [p for p in m.parameters() if p.dim() == 4]


def test_channels_last_changes_the_layout_not_the_outputs_gradients_or_parameters():
    nchw = _Nets()
    nhwc = copy.deepcopy(nchw)
    params = list(nhwc.parameters())
    ChannelsLast().setup(None, nhwc, "fit")
    # the same Parameter objects (an optimizer made before or after sees them), now NHWC
    assert [id(p) for p in nhwc.parameters()] == [id(p) for p in params]
    weights = _conv_weights(nhwc)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights if w.shape[1] > 1)
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    out_a, out_b = nchw(z), nhwc(z)
    torch.testing.assert_close(out_b, out_a, rtol=1e-4, atol=1e-5)
    out_a.sum().backward()
    out_b.sum().backward()
    for (name, a), b in zip(nchw.named_parameters(), nhwc.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    # an NHWC state dict loads into an NCHW net and gives the same outputs
    fresh = _Nets()
    fresh.load_state_dict(nhwc.state_dict())
    nchw.eval(), nhwc.eval(), fresh.eval()
    torch.testing.assert_close(fresh(z), nhwc(z), rtol=1e-4, atol=1e-5)
    assert all(w.is_contiguous() for w in _conv_weights(fresh))
