"""Streaming resampling of a device's samples to the 50 Hz the preprocessing core expects.

Method (per device, causal, with carried state):

* **Above 50 Hz**: an anti-alias low-pass first, an 8th-order Butterworth at 20 Hz run at
  the *source* rate (``sosfilt`` with carried delay lines, started in the steady state of
  the first sample like the core's filters). 20 Hz is the core's own noise corner, so the
  low-pass removes nothing the core keeps, and it attenuates what would fold back below
  20 Hz (≥ 30 Hz at the source) by ≥ 28 dB. Then linear interpolation at the 50 Hz
  instants. The filter's group delay at low frequencies (D source samples, ~4 at 100 Hz)
  is compensated by reading the filtered signal D samples later, so output sample ``k``
  still stands for device time ``first_sample_time + k / 50``.
* **Below 50 Hz**: linear interpolation between source samples (no filter needed: nothing
  above the source Nyquist exists to alias). Its error grows with frequency
  (at most (π f / rate)² / 2 of the amplitude: ~0.8% at 1 Hz, ~3% at 2 Hz from 25 Hz).

Output sample ``k`` sits at source position ``k * rate / 50 + D``, computed from ``k`` alone,
and is emitted once the source sample after that position has arrived. Every output value
depends only on ``k`` and the (chunk-invariant) filtered source samples, so the output is
bit-identical whatever the packet sizes. Latency: one source sample plus D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt
from scipy import signal

from shared.dsp.config import NUM_INPUT_CHANNELS

#: The rate of the preprocessing core (Hz).
TARGET_RATE_HZ = 50.0
#: Anti-alias low-pass for sources above 50 Hz: corner (Hz) and order.
ANTI_ALIAS_CUTOFF_HZ = 20.0
ANTI_ALIAS_ORDER = 8


def is_target_rate(rate_hz: float) -> bool:
    """True for 50 Hz (what the core takes directly, without resampling)."""
    return math.isclose(rate_hz, TARGET_RATE_HZ, rel_tol=1e-9)


@cache
def _anti_alias(rate_hz: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """``(sos, zi for a unit step, group delay in source samples)`` at ``rate_hz``."""
    sos = np.asarray(
        signal.butter(
            ANTI_ALIAS_ORDER, ANTI_ALIAS_CUTOFF_HZ, btype="lowpass", fs=rate_hz, output="sos"
        ),
        dtype=np.float64,
    )
    # Group delay at 1 Hz (flat over the band that matters for motion), summed over the
    # second-order sections; rounded so it is the same number on every machine.
    delay = sum(
        float(signal.group_delay((section[:3], section[3:]), w=[1.0], fs=rate_hz)[1][0])
        for section in sos
    )
    return sos, signal.sosfilt_zi(sos), round(delay, 6)


@dataclass(frozen=True, eq=False)
class ResamplerState:
    """Where one device's resampling stands.

    Attributes:
        rate_hz: source rate (Hz).
        consumed: source samples seen since the resampler started.
        produced: 50 Hz samples emitted since the resampler started.
        last: (6,) the last (anti-aliased) source sample, index ``consumed - 1``.
        zi: (sections, 2, 6) anti-alias delay line; (0, 2, 6) when the source is below 50 Hz.
    """

    rate_hz: float
    consumed: int
    produced: int
    last: npt.NDArray[np.float64]
    zi: npt.NDArray[np.float64]

    @classmethod
    def fresh(cls, rate_hz: float) -> ResamplerState:
        sections = _anti_alias(rate_hz)[0].shape[0] if rate_hz > TARGET_RATE_HZ else 0
        return cls(
            rate_hz=rate_hz,
            consumed=0,
            produced=0,
            last=np.zeros(NUM_INPUT_CHANNELS),
            zi=np.zeros((sections, 2, NUM_INPUT_CHANNELS)),
        )

    @property
    def filtered(self) -> bool:
        return self.rate_hz > TARGET_RATE_HZ

    @property
    def delay(self) -> float:
        """Compensated group delay of the anti-alias filter (source samples)."""
        return _anti_alias(self.rate_hz)[2] if self.filtered else 0.0

    def equals(self, other: ResamplerState) -> bool:
        return (
            self.rate_hz == other.rate_hz
            and self.consumed == other.consumed
            and self.produced == other.produced
            and np.array_equal(self.last, other.last)
            and np.array_equal(self.zi, other.zi)
        )


def resample(
    state: ResamplerState, samples: npt.NDArray[np.float64]
) -> tuple[ResamplerState, npt.NDArray[np.float64]]:
    """Advance by ``samples`` ((n, 6) at ``state.rate_hz``); returns the new 50 Hz samples."""
    n = samples.shape[0]
    if n == 0:
        return state, np.zeros((0, NUM_INPUT_CHANNELS))
    zi = state.zi
    if state.filtered:
        sos, zi_unit, _ = _anti_alias(state.rate_hz)
        if state.consumed == 0:
            zi = zi_unit[:, :, None] * samples[0][None, None, :]
        source, zi = signal.sosfilt(sos, samples, axis=0, zi=zi)
    else:
        source = samples
    # ext[i] is source sample base + i.
    if state.consumed:
        ext = np.concatenate([state.last[None, :], source])
        base = state.consumed - 1
    else:
        ext, base = source, 0
    total = state.consumed + n
    step = state.rate_hz / TARGET_RATE_HZ
    # Every k whose left neighbour floor(pos) has a right neighbour among the samples seen.
    upper = math.floor((total - 1 - state.delay) / step) + 2
    k = np.arange(state.produced, max(state.produced, upper), dtype=np.int64)
    pos = k * state.rate_hz / TARGET_RATE_HZ + state.delay
    left = np.floor(pos).astype(np.int64)
    ready = left + 1 <= total - 1
    k, pos, left = k[ready], pos[ready], left[ready]
    frac = (pos - left)[:, None]
    out = ext[left - base] * (1.0 - frac) + ext[left + 1 - base] * frac
    new_state = ResamplerState(
        rate_hz=state.rate_hz,
        consumed=total,
        produced=state.produced + int(k.shape[0]),
        last=np.array(source[-1], dtype=np.float64),
        zi=np.asarray(zi, dtype=np.float64),
    )
    return new_state, out
