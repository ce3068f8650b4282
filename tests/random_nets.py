"""Networks with every parameter and statistic random, so that a converted or exported copy that
drops or misplaces one of them gives different outputs (shared by the interop tests)."""
import torch
from torch import nn


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics, random PLIF ``w``; returns ``net`` in eval
    mode, which then uses them all."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 2 + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5 + 0.3)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            w = getattr(m, "w", None)
            if isinstance(w, nn.Parameter) and w.dim() == 0:
                w.copy_(torch.randn((), generator=gen))
    return net.eval()
