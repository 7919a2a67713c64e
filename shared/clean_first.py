"""Clean first: a denoising codec (sender ``mode=denoise``) codes its own clean reconstruction
instead of a noisy upload at qualities up to a limit set by the upload's noise.

The one-pass denoiser codes a noisy image at low and middle quality less well than it cleans it at
full quality. So a codec with a ``CleanFirst`` rule first reconstructs the upload at quality 1 on
the sender, without sending it: that picture C is the model's best estimate of the clean image,
and the rms difference between upload and C estimates the noise (``noise_estimate``, grey levels;
a few on clean photos, growing with the noise's sigma). When the asked quality is at most
``CleanFirst.max_quality(noise)`` it codes C instead of the upload; above it, the upload. The
stream is an ordinary one of the same model, so receivers need nothing new.

Just past the limit the upload's stream costs far more than the reconstruction's at it (several
times as many bytes at sigma 25), so a byte budget between the two is filled with the
reconstruction's streams past the limit, at the highest quality that fits, rather than left
two-thirds unused; a budget that fits the upload's stream just past the limit gets the upload's.
Qualities past the limit do the same over that whole range: when the upload's stream just past it
is more than ``CleanFirst.gap_ratio`` times the reconstruction's at it, quality q codes the best
stream (as a byte budget picks it) within a rate log-spaced from the reconstruction's at the limit
(q -> limit) to the upload's at quality 1 (q = 1), so rate rises with quality without the jump. A
smaller step is left as it is: the upload at q. ``CleanFirst.coder`` makes these choices for one
upload.

The rule's parameters are fitted per model and travel in its exported file (``clean_first`` in
the checkpoint's metadata, shared/checkpoint.py, beside the state dict: they change neither the
weights hash nor the file's name). ``Codec.load`` gives a codec the rule its file carries, none
for a file without one (every model not trained on noisy inputs, and files exported before the
parameters travelled). ``latentwire export`` writes ``FITTED_RULE`` into a run trained with
``--noise`` and keeps an exported model's own rule when it exports one again, so parameters a new
denoiser's own sweep fits go into its file's metadata (``torch.load``, edit, ``torch.save``) once.

``FITTED_RULE`` comes from a sweep over the 20 held-out BSDS images, not Kodak (figures in
models/README.md, "Clean first"): coding C gained PSNR at equal rate at moderate noise up to middle
qualities and lost at high ones, gained at every quality at strong noise, and changed nothing at
light noise. Cost: one more analysis and synthesis on the sender for every denoise-mode image (an
encode takes several times one pass); past the limit, the reconstruction's analysis and stream at
the limit to measure the gap, and across it a budget search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from shared.errors import CheckpointError
from shared.rate_control import fit_budget

if TYPE_CHECKING:
    from shared.codec import Encoded

    Coder = Callable[[float], Encoded]


@dataclass(frozen=True)
class CleanFirst:
    """When a denoising codec codes its own clean reconstruction: at qualities up to
    ``max_quality(noise)``, a line through (``noise_ref``, ``quality_at_ref``) rising by
    ``per_grey_level`` per grey level of noise."""

    noise_ref: float  # a noise estimate (rms grey levels)
    quality_at_ref: float  # the highest quality at which coding C gains there
    per_grey_level: float  # the slope of the limit
    # Qualities past the limit are spread over rates (module docstring) when the upload's stream
    # just past it is more than this many times the reconstruction's at it.
    gap_ratio: float

    def max_quality(self, noise: float) -> float:
        return self.quality_at_ref + self.per_grey_level * (noise - self.noise_ref)

    def coder(self, upload: Coder, clean: Coder, rgb: np.ndarray, cleaned: np.ndarray,
              noise: float) -> tuple[Coder, list, np.ndarray]:
        """(quality -> Encoded, the budget search's segments, the reference picture) for an upload
        ``rgb`` whose reconstruction ``cleaned`` is ``noise`` grey levels away. ``upload`` and
        ``clean`` code the two pictures at a quality. The reference is the reconstruction when the
        rule cleans any quality."""
        limit = self.max_quality(noise)
        if limit >= 1.0:
            return clean, [(clean, 0.0, 1.0)], cleaned
        if limit < 0.0:
            return upload, [(upload, 0.0, 1.0)], rgb
        # Byte budgets: the upload's streams above the limit where one fits; else the
        # reconstruction's at the highest quality that fits, past the limit if the budget reaches.
        above = float(np.nextafter(np.float32(limit), np.float32(2.0)))  # the first float32 past it
        segments = [(upload, above, 1.0), (clean, 0.0, 1.0)]

        def code(q: float) -> Encoded:
            if q <= limit:
                return clean(q)
            at_limit, past = clean(limit), upload(above)
            if past.nbytes <= self.gap_ratio * at_limit.nbytes:
                return upload(q)
            # Across the gap: the best stream at a rate log-spaced from the reconstruction's at
            # the limit (q -> limit) to the upload's at quality 1 (q = 1).
            top = max(upload(1.0).nbytes, at_limit.nbytes)
            budget = int(at_limit.nbytes * (top / at_limit.nbytes) ** ((q - limit) / (1.0 - limit)))
            return replace(fit_budget(rgb.shape, segments, budget), quality=q)

        return code, segments, cleaned


# The rule fitted for lw-vr-denoise (held-out sweep, module docstring), which export gives a new
# run trained on noisy inputs. Below about 15 grey levels of noise its limit is under 0: clean
# photos are coded as they are.
FITTED_RULE = CleanFirst(
    noise_ref=24.0,  # the noise estimate at sigma 25
    quality_at_ref=0.65,  # held-out crossover at sigma 25: gains to 0.6, level at 0.7
    per_grey_level=0.07,  # 0 at an estimate of 15 (sigma 15: no gain), above 1 from 29
    gap_ratio=1.1,  # smaller steps are left: three hundredths of quality change the rate about as much
)


def rule_of(meta: dict) -> CleanFirst | None:
    """The rule an exported model's metadata carries; None when it has none."""
    params = meta.get("clean_first")
    if params is None:
        return None
    try:
        return CleanFirst(**params)
    except TypeError as exc:
        names = ", ".join(f.name for f in fields(CleanFirst))
        raise CheckpointError(f"the file's clean_first parameters {params!r} are not {names}: "
                              "export the model again") from exc


def for_export(ckpt: dict) -> dict | None:
    """The ``clean_first`` metadata ``export_model`` writes for a checkpoint: an exported model's
    own (exported again), else ``FITTED_RULE`` for a run trained on noisy inputs (its training
    config has ``noise_sigma_max`` > 0), else None."""
    if "clean_first" in ckpt:
        rule = rule_of(ckpt)
    elif (ckpt.get("train_config") or {}).get("noise_sigma_max", 0) > 0:
        rule = FITTED_RULE
    else:
        rule = None
    return None if rule is None else asdict(rule)


def noise_estimate(rgb: np.ndarray, cleaned: np.ndarray) -> float:
    """The rms difference, in grey levels, between the upload and its quality-1 reconstruction."""
    return float(np.sqrt(np.mean(np.square(rgb.astype(np.float32) - cleaned.astype(np.float32)))))
