"""The context model: channel groups decoded in turn, each in two checkerboard halves.

The hyperprior alone gives every latent element a Gaussian from ẑ. This model refines that
Gaussian with what the decoder already has when it reaches the element (He et al. 2022, ELIC:
uneven channel groups, each split in a checkerboard, He et al. 2021):

    for each channel group k (``groups``, e.g. 16, 16, 32, 64, 64 of M = 192):
        anchors     (rows + cols even)  from  hyperprior (μ, σ) of all channels, ŷ of groups < k
        non-anchors (rows + cols odd)   from  the same + ŷ of this group's anchors (masked 5x5)

Without the checkerboard (``checkerboard=False``) each group is one step, conditioned on the
hyperprior and the earlier groups only (Minnen & Singh 2020's channel conditioning, without its
latent residual prediction): half the steps, no spatial context within a group. One group with
the checkerboard is He et al. 2021's checkerboard context alone.

Each group's network outputs a correction (Δμ, Δσ) to the hyperprior's mean and scale of the
*unscaled* latent; its last layer starts at zero, so an untrained context model codes exactly as
the hyperprior alone did. Both are then multiplied by the gain, as in ``network.py``. The quality
is an input too, since the spacing of ŷ's values (1/gain) depends on it.

``blocks`` > 0 deepens every group's network by that many residual blocks on each side of the
join (``SpatialBlock`` on the shared features, a 3x3 reach over what is decoded; ``PointBlock``
after the join), each starting as the identity, so a trained model grown this way codes as
before until its new blocks train.

Steps are 2 x len(groups) passes of small convolutions at 1/16 of the image side. For coding
they run on the CPU in float64 on both sides (the device policy in ``codec.py``): the corrected
scales pick the entropy coder's tables, so sender and receiver must compute them alike.

Dataflow of one step (group k, phase p)::

    (μ, σ) of all M ─► 1x1 ─┐
    ŷ of groups < k ─► 3x3 ─┼─► LReLU ─► 1x1 ─► LReLU ─┐
    quality ────────► 1x1 ─┘                            ├─► 1x1 ─► LReLU ─► 1x1 ─► (Δμ_k, Δσ_k)
    ŷ_k anchors (p = 1 only) ─► masked 5x5 ─────────────┘
    (with blocks: SpatialBlocks after the second LReLU, PointBlocks after the join's LReLU)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_GROUPS = (16, 16, 32, 64, 64)


def checkerboard(h: int, w: int, device=None, dtype=torch.bool) -> Tensor:
    """(1, 1, h, w) mask of the anchors: positions whose row + column is even."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    return ((rows + cols) % 2 == 0).to(dtype)[None, None]


class AnchorConv(nn.Conv2d):
    """A 5x5 convolution that, at a non-anchor position, reads only the four-connected anchors
    around it (taps whose row + column offset is odd); so it sees only decoded elements."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 5, padding=2)
        offsets = torch.arange(5) - 2
        mask = ((offsets[:, None] + offsets[None, :]) % 2 != 0).to(self.weight.dtype)
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask.to(self.weight.dtype), self.bias, padding=2)

    def at(self, x: Tensor, positions: Tensor) -> Tensor:
        """The convolution at ``positions`` only (flat, row-major), as (B, out, n): the 12 taps the
        mask keeps, gathered per position, times their weights (a quarter of the full form's
        work when the positions are the non-anchors)."""
        B, C, h, w = x.shape
        taps = self.mask[0, 0].nonzero()  # (12, 2) of (row, col) in the 5x5 kernel
        rows, cols = positions // w, positions % w
        flat = (rows[None] + taps[:, :1]) * (w + 4) + cols[None] + taps[:, 1:]  # (12, n) in the padded map
        gathered = F.pad(x, (2, 2, 2, 2)).flatten(2)[:, :, flat.flatten()]  # (B, C, 12 n)
        weight = self.weight[:, :, taps[:, 0], taps[:, 1]]  # (out, C, 12)
        return F.conv1d(gathered.reshape(B, C * len(taps), -1), weight.reshape(len(weight), -1, 1), self.bias)


class SpatialBlock(nn.Module):
    """x + 1x1(LReLU(3x3(x))), the 3x3 at half the width; the 1x1 starts at zero (the identity)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.reach = nn.Conv2d(width, width // 2, 3, padding=1)
        self.back = nn.Conv2d(width // 2, width, 1)
        nn.init.zeros_(self.back.weight)
        nn.init.zeros_(self.back.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.back(F.leaky_relu(self.reach(x), 0.2))


class PointBlock(nn.Module):
    """x + 1x1(LReLU(1x1(x))), per position; the second 1x1 starts at zero (the identity)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(width, width, 1)
        self.back = nn.Conv2d(width, width, 1)
        nn.init.zeros_(self.back.weight)
        nn.init.zeros_(self.back.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.back(F.leaky_relu(self.mix(x), 0.2))

    def at(self, x: Tensor) -> Tensor:
        """The same on (B, width, n) features gathered at n positions (1-D convolutions, as
        ``GroupStep._params_at``)."""
        h = F.leaky_relu(F.conv1d(x, self.mix.weight.flatten(2), self.mix.bias), 0.2)
        return x + F.conv1d(h, self.back.weight.flatten(2), self.back.bias)


class GroupStep(nn.Module):
    """The network of one channel group (module docstring): both its phases share the features
    of the hyperprior and the earlier groups; only the anchor context differs."""

    def __init__(self, M: int, before: int, channels: int, width: int, checkerboard: bool = True,
                 blocks: int = 0) -> None:
        super().__init__()
        self.hyper = nn.Conv2d(2 * M + 1, width, 1)  # (μ, σ) of every channel, and the quality
        self.before = nn.Conv2d(before, width, 3, padding=1) if before else None
        self.mix = nn.Conv2d(width, width, 1)
        self.anchors = AnchorConv(channels, width // 2) if checkerboard else None
        self.join = nn.Conv2d(width + (width // 2 if checkerboard else 0), width, 1)
        self.head = nn.Conv2d(width, 2 * channels, 1)
        self.spatial = nn.ModuleList(SpatialBlock(width) for _ in range(blocks))
        self.pointwise = nn.ModuleList(PointBlock(width) for _ in range(blocks))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def features(self, h: Tensor, y_before: Tensor | None) -> Tensor:
        """The features both phases share, from ``h``, this group's ``hyper`` projection of the
        hyperprior (``ContextModel.hyper_features`` gives every group's at once), and ŷ of the
        groups before it."""
        if self.before is not None:
            h = h + self.before(y_before)
        h = F.leaky_relu(self.mix(F.leaky_relu(h, 0.2)), 0.2)
        for block in self.spatial:
            h = block(h)
        return h

    def params(self, features: Tensor, y_anchors: Tensor | None,
               positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Δμ, Δσ) from the shared features and, for the non-anchors, this group's ŷ (whose
        non-anchor positions the masked convolution never reads at a non-anchor output).

        ``positions``: the flat positions (row-major) whose parameters are wanted; each comes out
        as (B, channels, n) then, and only those positions are computed. None: every position,
        each as (B, channels, h, w)."""
        if positions is not None:
            return self._params_at(features.flatten(2)[:, :, positions], y_anchors, positions)
        if self.anchors is not None:
            if y_anchors is None:
                ctx = features.new_zeros(features.shape[0], self.anchors.out_channels, *features.shape[-2:])
            else:
                ctx = self.anchors(y_anchors)
            features = torch.cat([features, ctx], 1)
        h = F.leaky_relu(self.join(features), 0.2)
        for block in self.pointwise:
            h = block(h)
        return self.head(h).chunk(2, 1)

    def _params_at(self, features: Tensor, y_anchors: Tensor | None, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``params`` at ``positions`` from the features gathered there, (B, width, n): the 1x1
        layers as 1-D convolutions over the positions (not ``@``, whose rounding depends on
        whether autograd is on: the coder's numbers must not); an anchor step (no ŷ yet) leaves
        out the join's context inputs, which would multiply zeros."""
        width = features.shape[1]
        join = self.join.weight.flatten(2)  # (width, width [+ width // 2], 1)
        if y_anchors is None:
            h = F.conv1d(features, join[:, :width], self.join.bias)
        else:
            h = F.conv1d(torch.cat([features, self.anchors.at(y_anchors, positions)], 1), join, self.join.bias)
        h = F.leaky_relu(h, 0.2)
        for block in self.pointwise:
            h = block.at(h)
        out = F.conv1d(h, self.head.weight.flatten(2), self.head.bias)
        return out.chunk(2, 1)


class ContextModel(nn.Module):
    """Channel groups x checkerboard (module docstring). ``steps`` yields, in decoding order,
    each (group slice, phase mask) and the function that gives its parameters."""

    def __init__(self, M: int, groups: tuple[int, ...] = DEFAULT_GROUPS, width: int = 128,
                 checkerboard: bool = True, blocks: int = 0) -> None:
        super().__init__()
        if sum(groups) != M or any(c <= 0 for c in groups):
            raise ValueError(f"context groups {groups} must be positive and sum to M = {M}")
        self.groups = tuple(groups)
        self.checkerboard = checkerboard
        self.starts = [sum(groups[:k]) for k in range(len(groups))]
        self.steps = nn.ModuleList(
            GroupStep(M, start, c, width, checkerboard, blocks) for start, c in zip(self.starts, self.groups)
        )

    def hyper_features(self, hyper: Tensor) -> list[Tensor]:
        """Every group's ``hyper`` projection of (μ, σ, quality) (B, 2M + 1, h, w), as one
        convolution with the groups' weights stacked: each output is the same sum as in the group's
        own convolution, and one wide product runs faster on the CPU in float64 than five narrow ones."""
        weight = torch.cat([step.hyper.weight for step in self.steps])
        bias = torch.cat([step.hyper.bias for step in self.steps])
        return list(F.conv2d(hyper, weight, bias).split([step.hyper.out_channels for step in self.steps], 1))

    def run(self, means: Tensor, scales: Tensor, quality: Tensor, y: Tensor, quantize) -> tuple[Tensor, Tensor, Tensor]:
        """Walk the decoding order over the unscaled latent.

        ``means``/``scales``: the hyperprior's (B, M, h, w); ``quality``: (B,); ``y``: the latent
        the encoder holds (or anything of its shape for a decoder, which never reads it);
        ``quantize(channels, phase_mask, mu, sigma, y_k)`` -> ŷ_k for that phase, unscaled like its
        arguments (the encoder rounds and codes, the training model rounds with a straight-through
        gradient, the decoder decodes); ``channels`` is the group's slice of M, ``phase_mask`` a
        (1, 1, h, w) 0/1 tensor of the positions this step codes; it is called once per step, in
        decoding order, and only the masked positions of what it returns are used. Returns the final (means, scales, ŷ), each (B, M, h, w)."""
        B, M, h, w = means.shape
        anchor = checkerboard(h, w, means.device, means.dtype)
        phases = ((0, anchor), (1, 1 - anchor)) if self.checkerboard else ((0, torch.ones_like(anchor)),)
        # Each checkerboard phase's parameters are computed at its own positions only.
        places = [mask.flatten().nonzero().squeeze(1) if self.checkerboard else None for _, mask in phases]
        q = quality.to(means.dtype).reshape(B, 1, 1, 1).expand(B, 1, h, w)
        hyper = torch.cat([means, scales, q], 1)
        out_means, out_scales, y_hat = [], [], []
        for start, c, step, h_k in zip(self.starts, self.groups, self.steps, self.hyper_features(hyper)):
            before = torch.cat(y_hat, 1) if y_hat else None
            feats = step.features(h_k, before)
            sl = slice(start, start + c)
            mu_k = torch.zeros_like(means[:, sl])
            sigma_k = torch.zeros_like(scales[:, sl])
            y_k = torch.zeros_like(means[:, sl])
            for (phase, mask), at in zip(phases, places):
                d_mu, d_sigma = step.params(feats, None if phase == 0 else y_k * anchor, at)
                if at is not None:
                    d_mu, d_sigma = _spread(d_mu, at, h, w), _spread(d_sigma, at, h, w)
                mu_p = means[:, sl] + d_mu
                sigma_p = scales[:, sl] + d_sigma
                y_p = quantize(sl, mask, mu_p, sigma_p, y[:, sl])
                mu_k = mu_k + mu_p * mask
                sigma_k = sigma_k + sigma_p * mask
                y_k = y_k + y_p * mask
            out_means.append(mu_k)
            out_scales.append(sigma_k)
            y_hat.append(y_k)
        return torch.cat(out_means, 1), torch.cat(out_scales, 1), torch.cat(y_hat, 1)


def _spread(values: Tensor, positions: Tensor, h: int, w: int) -> Tensor:
    """(B, C, n) values at flat ``positions`` -> (B, C, h, w), zero elsewhere."""
    B, C, _ = values.shape
    return values.new_zeros(B, C, h * w).index_copy(2, positions, values).reshape(B, C, h, w)
