"""Pre-processing: the NumPy twins of the CUDA kernels against imaging/OpenCV, the .cu files under
nvcc, and (GPU-marked) every CUDA kernel against its twin."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tdfusion_edge.apps import preprocess as pp
from tdfusion_edge.imaging import (compose_output, luma_and_chroma, merge_chroma, normalize_thermal,
                                   stretch_minmax)

RNG = np.random.default_rng(1234)


def _bgr(h=37, w=53):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- twins == imaging ---------------------------------------------------------------------------
def test_luma_chroma_twin_matches_imaging():
    bgr = _bgr()
    planes = pp.luma_chroma_bgr8(bgr)
    y, crcb = luma_and_chroma(bgr)
    np.testing.assert_allclose(planes.y, y, atol=1e-6, rtol=0)
    np.testing.assert_allclose(planes.crcb, crcb, atol=1e-4, rtol=0)
    neutral = pp.luma_chroma_bgr8(np.full((2, 2, 3), 77, np.uint8)).crcb
    np.testing.assert_allclose(neutral, 128.0, atol=1e-4)


def test_gray_and_thermal_twins_match_imaging():
    gray = _bgr()[:, :, 0]
    assert np.array_equal(pp.luma_gray8(gray), luma_and_chroma(gray)[0])
    raw = RNG.normal(7500, 600, (41, 59)).clip(0, 65535).astype(np.uint16)
    raw[0, 0], raw[1, 1] = 0, 65535  # outliers the percentiles must ignore
    lo, hi = pp.percentiles_from_histogram(pp.histogram_u16(raw))
    assert (lo, hi) == tuple(np.percentile(raw.astype(np.float32), pp.THERMAL_PCT))
    np.testing.assert_allclose(pp.normalize_u16(raw, lo, hi), normalize_thermal(raw), atol=1e-6, rtol=0)
    flat = np.full((8, 8), 1000, np.uint16)
    np.testing.assert_array_equal(pp.normalize_u16(flat, *pp.percentiles_from_histogram(pp.histogram_u16(flat))),
                                  normalize_thermal(flat))


def test_merge_compose_and_stretch_twins_match_imaging():
    a = RNG.uniform(0, 255, (23, 31, 2)).astype(np.float32)
    b = RNG.uniform(0, 255, (23, 31, 2)).astype(np.float32)
    np.testing.assert_allclose(pp.merge_chroma(a, b), merge_chroma(a, b), atol=1e-4, rtol=0)
    y = RNG.uniform(0.1, 0.8, (23, 31)).astype(np.float32)
    lo, rng = pp.minmax_range(y)
    ours = pp.compose_bgr8(y, a, lo, rng, stretch=True)
    ref = compose_output(stretch_minmax(y), a)
    assert np.abs(ours.astype(int) - ref).max() <= 1 and (ours != ref).mean() < 0.01
    gray = pp.compose_bgr8(y, None)
    assert gray.shape == (23, 31, 3) and np.array_equal(gray[:, :, 1], compose_output(y, None))
    assert not pp.compose_bgr8(np.full((4, 4), 0.3, np.float32), None, *pp.minmax_range(np.full((4, 4), 0.3)),
                               stretch=True).any()  # flat image: stretch gives 0 like stretch_minmax


def test_cpu_preprocessor_identity_is_imaging_exactly():
    bgr, gray = _bgr(), _bgr()[:, :, 1]
    pre = pp.CpuPreprocessor()
    p = pre.planes(bgr, np.eye(3, dtype=np.float32), bgr.shape[:2])
    np.testing.assert_allclose(p.y, luma_and_chroma(bgr)[0], atol=1e-6)
    assert pre.planes(gray, np.eye(3, dtype=np.float32), gray.shape).crcb is None
    grey_bgr = np.repeat(gray[:, :, None], 3, axis=2)  # a USB thermal camera sending gray as BGR
    assert pre.to_planes(grey_bgr).crcb is None


# -- geometry: the warp twin against OpenCV ------------------------------------------------------
@pytest.mark.parametrize("dst", [(18, 26), (74, 106), (37, 53)])
def test_warp_twin_equals_opencv_resize(dst):
    src = RNG.uniform(0, 255, (37, 53)).astype(np.float32)
    m = pp.sampling_matrix(pp.letterbox_matrix(src.shape, dst))
    out = pp.warp_bilinear(src, m, dst)
    ref = cv2.resize(src, dst[::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_warp_twin_matches_warp_perspective_and_letterbox_pads():
    src = RNG.uniform(0, 255, (60, 70)).astype(np.float32)
    h = np.array([[1.05, 0.02, 3.0], [0.01, 0.97, -2.0], [1e-4, -5e-5, 1.0]])
    out = pp.warp_bilinear(src, pp.sampling_matrix(h), (60, 70), fill=0.0)
    ref = cv2.warpPerspective(src, h, (70, 60), flags=cv2.INTER_LINEAR, borderValue=0)
    inner = np.zeros(out.shape, bool)
    inner[6:-6, 6:-6] = True
    np.testing.assert_allclose(out[inner], ref[inner], atol=0.02)  # OpenCV quantises positions to 1/32 px
    # Letterbox of a wide frame into a square grid: black bars above and below, content in between.
    wide = np.full((20, 80), 200.0, np.float32)
    box = pp.warp_bilinear(wide, pp.sampling_matrix(pp.letterbox_matrix(wide.shape, (40, 40))), (40, 40))
    assert np.all(box[:15] == 0) and np.all(box[-15:] == 0) and np.allclose(box[15:25], 200.0)


def test_warp_multichannel_fill_and_plan_reuse():
    crcb = RNG.uniform(0, 255, (30, 40, 2)).astype(np.float32)
    m = pp.sampling_matrix(pp.letterbox_matrix((30, 40), (40, 40)))
    plan = pp.WarpPlan(m, (30, 40), (40, 40))
    out = plan.apply(crcb, fill=128.0)
    assert out.shape == (40, 40, 2) and np.all(out[:5] == 128.0)
    for c in range(2):
        np.testing.assert_array_equal(out[..., c], plan.apply(crcb[..., c], fill=128.0))


# -- the CUDA sources --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])
def test_cuda_kernels_compile_with_nvcc(arch, tmp_path):
    from tdfusion_edge.apps.cuda_kernels import KERNELS, compile_ptx, find_nvcc
    if not find_nvcc():
        pytest.skip("nvcc not found")
    ptx = compile_ptx(arch, tmp_path).read_text()
    for name in KERNELS:
        assert f".entry {name}(" in ptx, name


def test_kernel_names_match_twins():
    from tdfusion_edge.apps.cuda_kernels import KERNELS, kernel_source
    src = kernel_source()
    for name in KERNELS:
        assert f"__global__ void {name}(" in src
    for twin in ("luma_chroma_bgr8", "luma_gray8", "histogram_u16", "normalize_u16", "merge_chroma", "compose_bgr8"):
        assert hasattr(pp, twin)


def test_auto_preprocessor_falls_back_to_numpy_without_cuda():
    from tdfusion_edge.apps import cuda_kernels
    try:
        cuda_kernels.CudaPreprocessor("auto").close()
        pytest.skip("a CUDA runtime is usable here")
    except cuda_kernels.CudaUnavailable:
        pass
    assert pp.create_preprocessor("auto").name == "numpy"


# -- GPU: each kernel against its twin -----------------------------------------------------------
@pytest.fixture(scope="module")
def gpu():
    from tdfusion_edge.apps import cuda_kernels
    try:
        pre = cuda_kernels.CudaPreprocessor("auto")
    except cuda_kernels.CudaUnavailable as exc:
        pytest.skip(f"no CUDA runtime: {exc}")
    yield pre
    pre.close()


@pytest.mark.gpu
def test_gpu_luma_kernels_equal_twins(gpu):
    bgr = _bgr(97, 131)
    ours, twin = gpu.luma_chroma_bgr8(bgr), pp.luma_chroma_bgr8(bgr)
    np.testing.assert_array_equal(ours.y, twin.y)
    np.testing.assert_array_equal(ours.crcb, twin.crcb)
    np.testing.assert_array_equal(gpu.luma_gray8(bgr[:, :, 0]), pp.luma_gray8(bgr[:, :, 0]))


@pytest.mark.gpu
def test_gpu_thermal_kernels_equal_twins(gpu):
    raw = RNG.normal(7500, 600, (97, 131)).clip(0, 65535).astype(np.uint16)
    twin = pp.normalize_u16(raw, *pp.percentiles_from_histogram(pp.histogram_u16(raw)))
    np.testing.assert_array_equal(gpu.normalize_u16(raw), twin)


@pytest.mark.gpu
@pytest.mark.parametrize("channels", [1, 2])
def test_gpu_warp_kernel_equals_twin(gpu, channels):
    shape = (57, 83) if channels == 1 else (57, 83, 2)
    src = RNG.uniform(0, 255, shape).astype(np.float32)
    h = np.array([[1.3, 0.05, -4.0], [0.02, 1.25, 3.0], [2e-4, 1e-4, 1.0]])
    m = pp.sampling_matrix(pp.letterbox_matrix((57, 83), (64, 96)) @ h)
    np.testing.assert_array_equal(gpu.warp_bilinear(src, m, (64, 96), 7.0), pp.warp_bilinear(src, m, (64, 96), 7.0))


@pytest.mark.gpu
def test_gpu_chroma_minmax_and_compose_kernels_equal_twins(gpu):
    a = RNG.uniform(0, 255, (61, 77, 2)).astype(np.float32)
    b = RNG.uniform(0, 255, (61, 77, 2)).astype(np.float32)
    np.testing.assert_array_equal(gpu.merge_chroma(a, b), pp.merge_chroma(a, b))
    y = RNG.uniform(-0.2, 1.3, (61, 77)).astype(np.float32)
    assert gpu.minmax_range(y) == pp.minmax_range(y)
    lo, rng = pp.minmax_range(y)
    for crcb in (a, None):
        for stretch in (True, False):
            np.testing.assert_array_equal(gpu.compose_bgr8(y, crcb, lo, rng, stretch),
                                          pp.compose_bgr8(y, crcb, lo, rng, stretch))


@pytest.mark.gpu
def test_gpu_preprocessor_planes_equal_cpu(gpu):
    cpu = pp.CpuPreprocessor()
    bgr = _bgr(120, 160)
    raw16 = RNG.normal(7500, 600, (60, 80)).clip(0, 65535).astype(np.uint16)
    h = np.array([[2.0, 0.0, 1.0], [0.0, 2.0, 0.5], [0.0, 0.0, 1.0]])
    grid = (96, 128)
    m_vis = pp.sampling_matrix(pp.letterbox_matrix((120, 160), grid))
    m_ir = pp.sampling_matrix(pp.letterbox_matrix((120, 160), grid) @ h)
    for raw, m in ((bgr, m_vis), (raw16, m_ir)):
        g, c = gpu.planes(raw, m, grid), cpu.planes(raw, m, grid)
        np.testing.assert_array_equal(g.y, c.y)
        assert (g.crcb is None) == (c.crcb is None)
        if c.crcb is not None:
            np.testing.assert_array_equal(g.crcb, c.crcb)
    y = RNG.uniform(0, 1, grid).astype(np.float32)
    np.testing.assert_array_equal(gpu.compose(y, None, True), cpu.compose(y, None, True))
