"""Signal kernels: DFT, STFT, the Hann/Hamming/Blackman windows and MelWeightMatrix.

Complex values travel as a trailing dimension of 2 (real, imaginary); real ones as a trailing dimension of 1.
Transforms run in float64 through ``numpy.fft`` and are cast back to the input's dtype.
"""

from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from onnxopt.interp.registry import kernel


def _scalar(v, default=None):
    return default if v is None or np.size(v) == 0 else np.asarray(v).reshape(-1)[0].item()


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] real or [..., 2] (re, im) -> complex128 without the trailing dimension."""
    if x.shape[-1] == 1:
        return x[..., 0].astype(np.complex128)
    if x.shape[-1] != 2:
        raise ValueError(f"the last dimension of a signal must be 1 (real) or 2 (complex), got {x.shape[-1]}")
    return x[..., 0].astype(np.float64) + 1j * x[..., 1].astype(np.float64)


def _from_complex(y: np.ndarray, dtype) -> np.ndarray:
    return np.stack([y.real, y.imag], axis=-1).astype(dtype)


def _dft(x, dft_length, axis, inverse, onesided):
    axis = axis % x.ndim
    if axis == x.ndim - 1:
        raise ValueError("DFT axis must not be the last (real/imaginary) dimension")
    n = _scalar(dft_length)
    if n is None:
        n = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    n = int(n)
    sig = _to_complex(x)
    if inverse:
        if onesided:  # IRFFT: one-sided complex spectrum -> real signal
            return np.fft.irfft(sig, n=n, axis=axis)[..., None].astype(x.dtype)
        return _from_complex(np.fft.ifft(sig, n=n, axis=axis), x.dtype)
    y = np.fft.fft(sig, n=n, axis=axis)
    if onesided:
        y = np.take(y, np.arange(n // 2 + 1), axis=axis)
    return _from_complex(y, x.dtype)


@kernel("DFT", since=17)
def DFT(input, dft_length=None, *, axis=1, inverse=0, onesided=0):
    return _dft(input, dft_length, axis, inverse, onesided)


@kernel("DFT", since=20)
def DFT20(input, dft_length=None, axis=None, *, inverse=0, onesided=0):
    return _dft(input, dft_length, int(_scalar(axis, -2)), inverse, onesided)


DFT20.__name__ = "DFT"


@kernel("STFT", since=17)
def STFT(signal, frame_step, window=None, frame_length=None, *, onesided=1):
    step = int(_scalar(frame_step))
    flen = _scalar(frame_length)
    if flen is None:
        flen = signal.shape[-2] if window is None else window.shape[0]
    flen = int(flen)
    if window is not None and window.shape[0] != flen:
        raise ValueError(f"STFT window has length {window.shape[0]}, frame_length is {flen}")
    win = np.ones(flen) if window is None else window.astype(np.float64)
    sig = _to_complex(signal)  # (batch, length)
    frames = (sig.shape[-1] - flen) // step + 1
    if frames < 1:
        raise ValueError(f"STFT signal of length {sig.shape[-1]} is shorter than frame_length {flen}")
    starts = np.arange(frames) * step
    framed = sig[:, starts[:, None] + np.arange(flen)[None, :]] * win  # (batch, frames, flen)
    y = np.fft.fft(framed, n=flen, axis=-1)
    if onesided:
        y = y[..., : flen // 2 + 1]
    return _from_complex(y, signal.dtype)


def _window(size, output_datatype, periodic, fn):
    n = int(_scalar(size))
    denom = n if periodic else n - 1
    k = np.arange(n, dtype=np.float64)
    return fn(k, denom).astype(tensor_dtype_to_np_dtype(output_datatype))


@kernel("HannWindow", since=17)
def HannWindow(size, *, output_datatype=1, periodic=1):
    return _window(size, output_datatype, periodic, lambda k, d: np.sin(np.pi * k / d) ** 2)


@kernel("HammingWindow", since=17)
def HammingWindow(size, *, output_datatype=1, periodic=1):
    alpha = 25.0 / 46.0  # the coefficients of the spec's reference (and onnxruntime): 25/46 and 21/46
    return _window(size, output_datatype, periodic, lambda k, d: alpha - (1 - alpha) * np.cos(2 * np.pi * k / d))


@kernel("BlackmanWindow", since=17)
def BlackmanWindow(size, *, output_datatype=1, periodic=1):
    return _window(size, output_datatype, periodic,
                   lambda k, d: 0.42 - 0.5 * np.cos(2 * np.pi * k / d) + 0.08 * np.cos(4 * np.pi * k / d))


@kernel("MelWeightMatrix", since=17)
def MelWeightMatrix(num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz, *,
                    output_datatype=1):
    # bin edges exactly as the spec's reference computes them (its arithmetic decides which DFT bin each
    # edge falls in): num_mel_bins + 2 edges spaced evenly in mel, mel(f) = 2595 * log10(1 + f / 700)
    bins = int(_scalar(num_mel_bins))
    n_fft = int(_scalar(dft_length))
    rate = _scalar(sample_rate)
    lo, hi = np.asarray(lower_edge_hertz).reshape(-1)[0], np.asarray(upper_edge_hertz).reshape(-1)[0]
    edges = np.arange(0, bins + 2)
    lo_mel = 2595 * np.log1p(lo / 700) / np.log(10)
    hi_mel = 2595 * np.log1p(hi / 700) / np.log(10)
    step = (hi_mel - lo_mel) / edges.shape[0]
    freq = 700 * np.expm1((edges * step + lo_mel) / 2595 * np.log(10))
    edges = (((n_fft + 1) * freq) // rate).astype(np.int64)
    out = np.zeros((n_fft // 2 + 1, bins))
    j = np.arange(out.shape[0])
    for i in range(bins):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            up = (j >= left) & (j <= center)
            out[up, i] = (j[up] - left) / (center - left)
        if right > center:
            down = (j >= center) & (j < right)
            out[down, i] = (right - j[down]) / (right - center)
    return out.astype(tensor_dtype_to_np_dtype(output_datatype))
