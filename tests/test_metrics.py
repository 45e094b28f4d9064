"""Fusion metrics against independent oracles: scikit-image / scikit-learn where they exist, and
slow loop-based re-derivations from METRICS.md (sharing no code with the implementation) elsewhere."""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion_edge.metrics import (CONVENTIONS, METRIC_NAMES, compute_metrics, compute_metrics_conventions,
                                   confusion_matrix, load_gray_for_metrics, miou_macc)
from tdfusion_edge.metrics.table import format_table, mean_row, write_csv, write_json

REL = 1e-4
ROADSCENE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "roadscene"


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth background + hard-edged shapes + flat patches + noise, rounded to 0–255 like a real image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = 90 + 60 * np.sin(xx / (3 + seed % 4)) * np.cos(yy / 5) + rng.normal(0, 6, (h, w))
    img[h // 4: h // 2, w // 5: w // 2] += 70                     # a bright block with hard edges
    img[(yy - h * 0.7) ** 2 + (xx - w * 0.7) ** 2 < (min(h, w) / 5) ** 2] = 30 + 10 * seed  # a disc
    img[: h // 6, -w // 4:] = 200                                  # perfectly flat corner
    return np.clip(np.round(img), 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def triple():
    a = scene(48, 56, 1)
    b = scene(48, 56, 2)
    rng = np.random.default_rng(3)
    f = np.clip(np.round(0.6 * a + 0.5 * b - 20 + rng.normal(0, 4, a.shape)), 0, 255).astype(np.float32)
    f[30:40, 5:15] = 255 - f[30:40, 5:15]   # an inverted patch: negative local correlation, artifacts
    return f, a, b


def rel_close(got: float, want: float, rel: float = REL) -> bool:
    return abs(got - want) <= rel * max(abs(want), 1e-12)


# ---------------------------------------------------------------- oracles written from METRICS.md

def oracle_ag(img):
    f = img.astype(np.float64)
    h, w = f.shape
    total = 0.0
    for i in range(h):
        for j in range(w):
            gx = f[i, 1] - f[i, 0] if j == 0 else f[i, -1] - f[i, -2] if j == w - 1 else (f[i, j + 1] - f[i, j - 1]) / 2
            gy = f[1, j] - f[0, j] if i == 0 else f[-1, j] - f[-2, j] if i == h - 1 else (f[i + 1, j] - f[i - 1, j]) / 2
            total += math.sqrt((gx * gx + gy * gy) / 2)
    return total / (h * w)


def oracle_corr(x, y):
    x = [float(v) for v in np.ravel(x)]
    y = [float(v) for v in np.ravel(y)]
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((p - mx) * (q - my) for p, q in zip(x, y))
    sxx = math.fsum((p - mx) ** 2 for p in x)
    syy = math.fsum((q - my) ** 2 for q in y)
    return sxy / math.sqrt(sxx * syy)


def oracle_scd(f, a, b):
    f, a, b = (v.astype(np.float64) for v in (f, a, b))
    return oracle_corr(a, f - b) + oracle_corr(b, f - a)


def _conv3_same_zero(img, k):
    """Plain 'same' 2-D convolution (kernel flipped) with zero padding, pixel by pixel."""
    h, w = img.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            s = 0.0
            for u in range(3):
                for v in range(3):
                    ii, jj = i + 1 - u, j + 1 - v
                    if 0 <= ii < h and 0 <= jj < w:
                        s += k[u][v] * img[ii, jj]
            out[i, j] = s
    return out


def oracle_qabf(f, a, b):
    h3 = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    h1 = [[1, 2, 1], [0, 0, 0], [-1, -2, -1]]

    def edges(img):
        x = _conv3_same_zero(img.astype(np.float64), h3)
        y = _conv3_same_zero(img.astype(np.float64), h1)
        g = np.sqrt(x * x + y * y)
        ang = np.empty_like(g)
        for idx in np.ndindex(g.shape):
            ang[idx] = math.pi / 2 if x[idx] == 0 else math.atan(y[idx] / x[idx])
        return g, ang

    def q(gs, as_, gf, af):
        if gs > gf:
            G = gf / gs
        elif gs < gf:
            G = gs / gf
        else:
            G = gf
        A = 1 - abs(as_ - af) / (math.pi / 2)
        return 0.9994 / (1 + math.exp(-15 * (G - 0.5))) * 0.9879 / (1 + math.exp(-22 * (A - 0.8)))

    ga, aa = edges(a)
    gb, ab = edges(b)
    gf, af = edges(f)
    num = den = 0.0
    for idx in np.ndindex(ga.shape):
        num += q(ga[idx], aa[idx], gf[idx], af[idx]) * ga[idx] + q(gb[idx], ab[idx], gf[idx], af[idx]) * gb[idx]
        den += ga[idx] + gb[idx]
    return num / den


def oracle_nabf(f, a, b):
    """Kumar's modified NABF: Sobel/8 by correlation over a mirror extension that skips the edge pixel."""
    vtemp = [[-1 / 8, 0, 1 / 8], [-2 / 8, 0, 2 / 8], [-1 / 8, 0, 1 / 8]]
    htemp = [[-1 / 8, -2 / 8, -1 / 8], [0, 0, 0], [1 / 8, 2 / 8, 1 / 8]]

    def mirror(k, n):
        return -k if k < 0 else 2 * (n - 1) - k if k >= n else k

    def edges(img):
        img = img.astype(np.float64)
        h, w = img.shape
        gv, gh = np.zeros((h, w)), np.zeros((h, w))
        for i in range(h):
            for j in range(w):
                for u in range(3):
                    for v in range(3):
                        p = img[mirror(i + u - 1, h), mirror(j + v - 1, w)]
                        gv[i, j] += p * vtemp[u][v]
                        gh[i, j] += p * htemp[u][v]
        g = np.sqrt(gh ** 2 + gv ** 2)
        ang = np.zeros_like(g)
        for idx in np.ndindex(g.shape):
            if not (gv[idx] == 0 and gh[idx] == 0):
                ang[idx] = math.pi / 2 if gh[idx] == 0 else math.atan(gv[idx] / gh[idx])
        return g, ang

    def q(gs, as_, gf, af):
        G = 0.0 if gs == 0 or gf == 0 else gf / gs if gs > gf else gs / gf
        A = abs(abs(as_ - af) - math.pi / 2) * 2 / math.pi
        qg = 0.9999 / (1 + math.exp(-19 * (G - 0.5)))
        qa = 0.9995 / (1 + math.exp(-22 * (A - 0.5)))
        return math.sqrt(qg * qa)

    ga, aa = edges(a)
    gb, ab = edges(b)
    gf, af = edges(f)
    num = wsum = 0.0
    for idx in np.ndindex(ga.shape):
        wa = ga[idx] ** 1.5 if ga[idx] >= 2 else 0.001
        wb = gb[idx] ** 1.5 if gb[idx] >= 2 else 0.001
        wsum += wa + wb
        if gf[idx] > ga[idx] and gf[idx] > gb[idx]:
            num += (1 - q(ga[idx], aa[idx], gf[idx], af[idx])) * wa + (1 - q(gb[idx], ab[idx], gf[idx], af[idx])) * wb
    return num / wsum


def _gauss2d(n):
    sd = n / 5
    r = (n - 1) / 2
    h = np.array([[math.exp(-((x - r) ** 2 + (y - r) ** 2) / (2 * sd * sd)) for x in range(n)] for y in range(n)])
    return h / h.sum()


def _valid_filter(img, win):
    n = win.shape[0]
    h, w = img.shape
    out = np.empty((h - n + 1, w - n + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(img[i:i + n, j:j + n] * win[::-1, ::-1])  # convolution
    return out


def oracle_vifp(ref, dist):
    """VIFp: 4 scales, N = 2^(5−s)+1, σ = N/5, σn² = 2, 'valid' filtering, ×2 decimation between scales."""
    eps, sn = 1e-10, 2.0
    ref, dist = ref.astype(np.float64), dist.astype(np.float64)
    num = den = 0.0
    for s in range(1, 5):
        win = _gauss2d(2 ** (5 - s) + 1)
        if s > 1:
            ref = _valid_filter(ref, win)[::2, ::2]
            dist = _valid_filter(dist, win)[::2, ::2]
        mu1, mu2 = _valid_filter(ref, win), _valid_filter(dist, win)
        e11, e22, e12 = _valid_filter(ref * ref, win), _valid_filter(dist * dist, win), _valid_filter(ref * dist, win)
        for idx in np.ndindex(mu1.shape):
            s1 = max(e11[idx] - mu1[idx] ** 2, 0.0)
            s2 = max(e22[idx] - mu2[idx] ** 2, 0.0)
            s12 = e12[idx] - mu1[idx] * mu2[idx]
            g = s12 / (s1 + eps)
            sv = s2 - g * s12
            if s1 < eps:
                g, sv, s1 = 0.0, s2, 0.0
            if s2 < eps:
                g, sv = 0.0, 0.0
            if g < 0:
                sv, g = s2, 0.0
            if sv <= eps:
                sv = eps
            num += math.log10(1 + g * g * s1 / (sv + sn))
            den += math.log10(1 + s1 / sn)
    return num / den


# ---------------------------------------------------------------- oracle comparisons

def test_vif_matches_loop_oracle_both_conventions(triple):
    f, a, b = triple
    va, vb = oracle_vifp(a, f), oracle_vifp(b, f)
    got = compute_metrics_conventions(f, a, b, metrics=["VIF"])
    assert rel_close(got["cddfuse"]["VIF"], va + vb)
    assert rel_close(got["tdfusion"]["VIF"], (va + vb) / 2)


def test_vif_matches_sewar_when_installed(triple):
    sewar = pytest.importorskip("sewar.full_ref")
    f, a, b = triple
    want = (sewar.vifp(a, f) + sewar.vifp(b, f)) / 2
    assert rel_close(compute_metrics(f, a, b, metrics=["VIF"])["VIF"], want)


def test_qabf_matches_loop_oracle(triple):
    f, a, b = triple
    assert rel_close(compute_metrics(f, a, b, metrics=["Qabf"])["Qabf"], oracle_qabf(f, a, b))


def test_nabf_matches_loop_oracle(triple):
    f, a, b = triple
    got = compute_metrics(f, a, b, metrics=["Nabf"])["Nabf"]
    want = oracle_nabf(f, a, b)
    assert want > 0  # the inverted patch really produces artifacts
    assert rel_close(got, want)


def test_ag_and_scd_match_direct_formulas(triple):
    f, a, b = triple
    got = compute_metrics(f, a, b, metrics=["AG", "SCD"])
    assert rel_close(got["AG"], oracle_ag(f))
    assert rel_close(got["SCD"], oracle_scd(f, a, b))


def test_ssim_matches_scikit_image(triple):
    skm = pytest.importorskip("skimage.metrics")
    f, a, b = triple
    td = (skm.structural_similarity(np.uint8(f), np.uint8(a)) + skm.structural_similarity(np.uint8(f), np.uint8(b))) / 2
    f64, a64, b64 = (x.astype(np.float64) for x in (f, a, b))
    cdd = skm.structural_similarity(f64, a64, data_range=2) + skm.structural_similarity(f64, b64, data_range=2)
    got = compute_metrics_conventions(f, a, b, metrics=["SSIM"])
    assert rel_close(got["tdfusion"]["SSIM"], td)
    assert rel_close(got["cddfuse"]["SSIM"], cdd)


def test_mi_matches_scikit_learn(triple):
    sk = pytest.importorskip("sklearn.metrics")
    f, a, b = triple
    want = sk.mutual_info_score(f.ravel(), a.ravel()) + sk.mutual_info_score(f.ravel(), b.ravel())
    assert rel_close(compute_metrics(f, a, b, metrics=["MI"])["MI"], want)


@pytest.mark.filterwarnings("ignore:Clustering metrics expects discrete values")
def test_mi_non_integer_values_match_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    f = rng.integers(0, 6, (20, 30)) + 0.5   # labels that are not 0–255 integers take the general path
    a = rng.integers(0, 4, (20, 30)).astype(float) * 1.25
    b = -rng.integers(0, 3, (20, 30)).astype(float)
    want = sk.mutual_info_score(f.ravel(), a.ravel()) + sk.mutual_info_score(f.ravel(), b.ravel())
    assert rel_close(compute_metrics(f, a, b, metrics=["MI"])["MI"], want)


def test_simple_statistics_match_their_definitions(triple):
    f, a, b = triple
    f64, a64, b64 = (x.astype(np.float64) for x in (f, a, b))
    hist = np.histogram(np.round(f64), bins=256, range=(0, 256))[0] / f.size
    hist = hist[hist > 0]
    want = {
        "EN": -float(np.sum(hist * np.log2(hist))),
        "SD": float(np.sqrt(np.mean((f64 - f64.mean()) ** 2))),
        "SF": math.sqrt(np.mean(np.diff(f64, axis=1) ** 2) + np.mean(np.diff(f64, axis=0) ** 2)),
        "PSNR": 10 * math.log10(f64.max() ** 2 / ((np.mean((a64 - f64) ** 2) + np.mean((b64 - f64) ** 2)) / 2)),
        "CC": (np.corrcoef(a64.ravel(), f64.ravel())[0, 1] + np.corrcoef(b64.ravel(), f64.ravel())[0, 1]) / 2,
    }
    got = compute_metrics(f, a, b, metrics=list(want))
    for name, value in want.items():
        assert rel_close(got[name], value), name


def test_conventions_differ_only_in_vif_and_ssim(triple):
    res = compute_metrics_conventions(*triple)
    td, cdd = res["tdfusion"], res["cddfuse"]
    assert list(td) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        if name not in ("VIF", "SSIM"):
            assert td[name] == cdd[name], name
    assert rel_close(cdd["VIF"], 2 * td["VIF"], 1e-12)
    assert td == compute_metrics(*triple)  # tdfusion is the default convention


# ---------------------------------------------------------------- API behaviour and edge cases

def test_metric_subset_is_case_insensitive_and_ordered(triple):
    got = compute_metrics(*triple, metrics=["ssim", "EN", "qabf"])
    assert list(got) == ["SSIM", "EN", "Qabf"]


@pytest.mark.parametrize("kwargs", [{"convention": "matlab"}, {"metrics": ["EN", "bogus"]}, {"metrics": []}])
def test_bad_arguments_raise_value_error(triple, kwargs):
    with pytest.raises(ValueError):
        compute_metrics(*triple, **kwargs)


@pytest.mark.parametrize("shapes", [((48, 56), (48, 56), (48, 55)), ((40, 40), (41, 40), (40, 40))])
def test_mismatched_shapes_raise_value_error(shapes):
    f, a, b = (np.zeros(s, np.float32) for s in shapes)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(f, a, b)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3)), np.full((8, 8), np.nan), np.zeros((2, 8)), np.zeros(64)])
def test_invalid_images_raise_value_error(bad):
    good = np.zeros(bad.shape[:2] if bad.ndim >= 2 else (8, 8))
    with pytest.raises(ValueError):
        compute_metrics(bad, good, good)


def test_constant_images_give_defined_values_without_warnings():
    """Documented values: a constant image correlates 0 with anything; a source without local variance
    has VIF 1.0 (CDDFuse's rule); F equal to both sources has PSNR +inf; no edges in either source → Qabf 0."""
    tex = scene(48, 56, 4)
    flat = np.full((48, 56), 128.0)
    black = np.zeros((48, 56))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flat_fused = compute_metrics_conventions(flat, tex, tex[::-1].copy())
        flat_sources = compute_metrics_conventions(tex, flat, black)
        all_black = compute_metrics_conventions(black, black, black)
    for res in (flat_fused, flat_sources, all_black):
        for conv in CONVENTIONS:
            assert not any(math.isnan(v) for v in res[conv].values()), res[conv]
    td = flat_fused["tdfusion"]
    assert td["EN"] == 0 and td["SD"] == 0 and td["SF"] == 0 and td["AG"] == 0 and td["MI"] == 0
    assert td["CC"] == 0 and td["VIF"] == 0
    assert flat_sources["tdfusion"]["VIF"] == 1.0 and flat_sources["cddfuse"]["VIF"] == 2.0
    assert flat_sources["tdfusion"]["CC"] == 0
    assert all_black["tdfusion"]["PSNR"] == math.inf
    assert all_black["tdfusion"]["Qabf"] == 0.0
    assert all_black["tdfusion"]["SSIM"] == 1.0 and all_black["cddfuse"]["SSIM"] == 2.0


def test_tiny_images_give_nan_only_for_windowed_metrics():
    """3×3 is the smallest accepted size; SSIM needs 7×7 and VIF 41×41, below that they are NaN."""
    rng = np.random.default_rng(0)
    f, a, b = (rng.integers(0, 256, (3, 3)).astype(np.float32) for _ in range(3))
    got = compute_metrics(f, a, b)
    assert math.isnan(got["SSIM"]) and math.isnan(got["VIF"])
    assert all(math.isfinite(v) for k, v in got.items() if k not in ("SSIM", "VIF"))
    f40, a40, b40 = (scene(40, 60, s) for s in (1, 2, 3))
    assert math.isnan(compute_metrics(f40, a40, b40, metrics=["VIF"])["VIF"])
    f41, a41, b41 = (scene(41, 41, s) for s in (1, 2, 3))
    assert math.isfinite(compute_metrics(f41, a41, b41, metrics=["VIF"])["VIF"])


def test_full_set_on_480x640_is_fast_enough():
    """Generous sanity bound only (2 shared cores); the measured figure is about 0.4 s."""
    f, a, b = (np.tile(scene(48, 64, s), (10, 10)) for s in (1, 2, 3))
    compute_metrics(f, a, b)  # warm-up
    start = time.perf_counter()
    compute_metrics(f, a, b)
    assert time.perf_counter() - start < 6.0


# ---------------------------------------------------------------- loading

def test_load_gray_rounds_float_bgr_to_gray(tmp_path):
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), bgr)
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    want = np.round(0.299 * r + 0.587 * g + 0.114 * b)
    got = load_gray_for_metrics(path)
    assert got.dtype == np.float32 and got.shape == (12, 10)
    assert np.abs(got - want).max() <= 1  # OpenCV's coefficients are rounded; ties may land either side
    assert np.array_equal(got, np.round(cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY)))


def test_load_gray_rejects_unreadable_files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        load_gray_for_metrics(bad)
    with pytest.raises(ValueError):
        load_gray_for_metrics(tmp_path / "missing.png")


# ---------------------------------------------------------------- segmentation

def test_confusion_matrix_counts_and_ignores():
    target = np.array([[0, 1, 1], [2, 255, 2]])
    pred = np.array([[0, 1, 2], [2, 0, 1]])
    cm = confusion_matrix(pred, target, num_classes=3)
    want = np.zeros((3, 3), np.int64)
    for t, p in zip(target.ravel(), pred.ravel()):
        if t != 255:
            want[t, p] += 1
    assert np.array_equal(cm, want) and cm.dtype == np.int64


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0]), num_classes=3)


def test_miou_macc_known_values_and_absent_classes():
    cm = np.array([[3, 1, 0, 0],
                   [0, 2, 2, 0],
                   [0, 0, 4, 0],
                   [0, 0, 0, 0]])  # class 3 never appears: excluded from both means
    miou, macc, iou = miou_macc(cm)
    assert np.allclose(iou[:3], [3 / 4, 2 / 5, 4 / 6]) and math.isnan(iou[3])
    assert math.isclose(miou, (3 / 4 + 2 / 5 + 4 / 6) / 3)
    assert math.isclose(macc, (3 / 4 + 2 / 4 + 4 / 4) / 3)


# ---------------------------------------------------------------- tables

def test_table_text_csv_and_json(tmp_path):
    rows = {"a": {"EN": 1.0, "PSNR": math.inf}, "bb": {"EN": 3.0, "PSNR": 20.0}}
    mean = mean_row(rows, ["EN", "PSNR"])
    assert mean == {"EN": 2.0, "PSNR": 20.0}   # non-finite values are left out of the mean
    text = format_table(rows, ["EN", "PSNR"], mean, title="t").splitlines()
    assert text[0] == "t" and text[-1].split() == ["mean", "2.0000", "20.0000"]
    assert len({len(line) for line in text[1:] if not line.startswith("-")}) == 1  # aligned
    write_csv(tmp_path / "m.csv", {"tdfusion": rows}, ["EN", "PSNR"])
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "image,convention,EN,PSNR" and lines[-1].startswith("mean,tdfusion,2.0")
    write_json(tmp_path / "m.json", {"rows": rows, "x": float("nan")})
    import json
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["rows"]["a"]["PSNR"] is None and data["x"] is None


# ---------------------------------------------------------------- real data

@pytest.mark.skipif(not (ROADSCENE / "ir").is_dir(), reason="shared RoadScene sample not present")
def test_roadscene_pair_gives_plausible_values():
    name = sorted(p.name for p in (ROADSCENE / "ir").iterdir())[0]
    a = load_gray_for_metrics(ROADSCENE / "ir" / name)
    b = load_gray_for_metrics(ROADSCENE / "vi" / name)
    f = np.round((a + b) / 2)
    res = compute_metrics_conventions(f, a, b)
    for conv, vals in res.items():
        assert all(math.isfinite(v) for v in vals.values()), (conv, vals)
        assert 0 < vals["EN"] <= 8 and vals["SD"] > 0 and vals["SF"] > 0 and vals["AG"] > 0
        assert 0 < vals["Qabf"] < 1 and 0 <= vals["Nabf"] < 0.5 and -2 < vals["SCD"] < 2
        assert 0 < vals["MI"] < 16 and -1 <= vals["CC"] <= 1 and 0 < vals["PSNR"] < 60
    assert 0 < res["tdfusion"]["VIF"] < 1 and 0 < res["tdfusion"]["SSIM"] < 1
    assert 0 < res["cddfuse"]["VIF"] < 2 and 0 < res["cddfuse"]["SSIM"] < 2
