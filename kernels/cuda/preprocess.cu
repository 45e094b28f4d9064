// Pre- and post-processing kernels of the live app (tdfusion_edge.apps).
//
// Each kernel has a NumPy twin of the same name in apps/preprocess.py that defines its maths; the
// arithmetic below is written in the same order. Compile with --fmad=false (the loaders do) so that
// no multiply-add is contracted and results round as the twins' float32 NumPy code does.
// Loaded at run time by pycuda (SourceModule, no_extern_c=True) or CuPy (RawModule); ahead-of-time
// check: nvcc -ptx -arch=sm_87 (Jetson Orin) / -arch=sm_90 (H100) preprocess.cu

extern "C" {

// 8-bit BGR (interleaved) -> Y/255 and Cr, Cb on the 0-255 scale, neutral 128 (OpenCV float YCrCb).
__global__ void luma_chroma_bgr8(const unsigned char* __restrict__ bgr, int n,
                                 float* __restrict__ y, float* __restrict__ crcb)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float b = (float)bgr[3 * i];
    float g = (float)bgr[3 * i + 1];
    float r = (float)bgr[3 * i + 2];
    float yy = b * 0.114f + g * 0.587f + r * 0.299f;
    y[i] = yy / 255.0f;
    crcb[2 * i] = (r - yy) * 0.713f + 128.0f;
    crcb[2 * i + 1] = (b - yy) * 0.564f + 128.0f;
}

// 8-bit gray -> [0,1].
__global__ void luma_gray8(const unsigned char* __restrict__ gray, int n, float* __restrict__ y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = (float)gray[i] / 255.0f;
}

// 65536-bin histogram of 16-bit thermal counts (hist must be zeroed). The percentiles are read
// off its cumulative sum on the host, exactly as numpy.percentile would compute them.
__global__ void histogram_u16(const unsigned short* __restrict__ src, int n, unsigned int* __restrict__ hist)
{
    int stride = blockDim.x * gridDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        atomicAdd(&hist[src[i]], 1u);
    }
}

// 16-bit counts -> clip((x - lo) / range, 0, 1).
__global__ void normalize_u16(const unsigned short* __restrict__ src, int n, float lo, float range,
                              float* __restrict__ y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ((float)src[i] - lo) / range;
    y[i] = fminf(fmaxf(v, 0.0f), 1.0f);
}

// Perspective bilinear warp of a float image with `channels` interleaved channels.
// m = grid -> source (row-major 3x3). Inside the source footprint [-0.5, W-0.5] x [-0.5, H-0.5]
// the neighbours are clamped to the image; outside, `fill`.
__global__ void warp_bilinear_f32(const float* __restrict__ src, int sw, int sh, int channels,
                                  float* __restrict__ dst, int dw, int dh,
                                  float m0, float m1, float m2, float m3, float m4, float m5,
                                  float m6, float m7, float m8, float fill)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int yv = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dw || yv >= dh) return;
    float px = (float)x;
    float py = (float)yv;
    float u = m0 * px + m1 * py + m2;
    float v = m3 * px + m4 * py + m5;
    float w = m6 * px + m7 * py + m8;
    float sx = u / w;
    float sy = v / w;
    float* out = dst + ((size_t)yv * dw + x) * channels;
    bool valid = (w > 0.0f) && (sx >= -0.5f) && (sx <= (float)sw - 0.5f)
                 && (sy >= -0.5f) && (sy <= (float)sh - 0.5f);
    if (!valid) {
        for (int c = 0; c < channels; ++c) out[c] = fill;
        return;
    }
    float x0 = floorf(sx);
    float y0 = floorf(sy);
    float fx = sx - x0;
    float fy = sy - y0;
    int xi = (int)x0;
    int yi = (int)y0;
    int xa = min(max(xi, 0), sw - 1);
    int xb = min(max(xi + 1, 0), sw - 1);
    int ya = min(max(yi, 0), sh - 1);
    int yb = min(max(yi + 1, 0), sh - 1);
    const float* r0 = src + (size_t)ya * sw * channels;
    const float* r1 = src + (size_t)yb * sw * channels;
    for (int c = 0; c < channels; ++c) {
        float p00 = r0[xa * channels + c];
        float p01 = r0[xb * channels + c];
        float p10 = r1[xa * channels + c];
        float p11 = r1[xb * channels + c];
        out[c] = (1.0f - fy) * ((1.0f - fx) * p00 + fx * p01) + fy * ((1.0f - fx) * p10 + fx * p11);
    }
}

// Floats mapped to unsigned keys that sort in the same order, so atomicMin/Max can reduce them.
__device__ __forceinline__ unsigned int ordered_key(float f)
{
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Min and max of y (out[0] must start at 0xffffffff, out[1] at 0). Launch with 256 threads per block.
__global__ void minmax_f32(const float* __restrict__ y, int n, unsigned int* __restrict__ out)
{
    __shared__ unsigned int smin[256];
    __shared__ unsigned int smax[256];
    unsigned int lo = 0xffffffffu, hi = 0u;
    int stride = blockDim.x * gridDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned int k = ordered_key(y[i]);
        lo = min(lo, k);
        hi = max(hi, k);
    }
    smin[threadIdx.x] = lo;
    smax[threadIdx.x] = hi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            smin[threadIdx.x] = min(smin[threadIdx.x], smin[threadIdx.x + s]);
            smax[threadIdx.x] = max(smax[threadIdx.x], smax[threadIdx.x + s]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        atomicMin(&out[0], smin[0]);
        atomicMax(&out[1], smax[0]);
    }
}

// Chroma of two colour sources, each weighted by its distance from neutral (n = 2 x pixels).
__global__ void merge_chroma(const float* __restrict__ a, const float* __restrict__ b, int n,
                             float* __restrict__ out)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float va = a[i];
    float vb = b[i];
    float da = fabsf(va - 128.0f);
    float db = fabsf(vb - 128.0f);
    out[i] = (va * da + vb * db) / (da + db + 1e-4f);
}

// Fused Y (optionally stretched by (y - lo) / range) -> 8-bit, with chroma re-attached -> BGR.
// Without chroma (has_chroma = 0) the gray value goes to all three channels.
__global__ void compose_bgr8(const float* __restrict__ y, const float* __restrict__ crcb, int has_chroma,
                             int n, float lo, float range, int stretch, unsigned char* __restrict__ bgr)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = y[i];
    if (stretch) v = (range > 0.0f) ? (v - lo) / range : 0.0f;
    float yq = rintf(fminf(fmaxf(v, 0.0f), 1.0f) * 255.0f);
    if (!has_chroma) {
        unsigned char g = (unsigned char)yq;
        bgr[3 * i] = g;
        bgr[3 * i + 1] = g;
        bgr[3 * i + 2] = g;
        return;
    }
    float cr = crcb[2 * i] - 128.0f;
    float cb = crcb[2 * i + 1] - 128.0f;
    float b = yq + cb * 1.773f;
    float g = yq + cb * -0.344f + cr * -0.714f;
    float r = yq + cr * 1.403f;
    bgr[3 * i] = (unsigned char)rintf(fminf(fmaxf(b, 0.0f), 255.0f));
    bgr[3 * i + 1] = (unsigned char)rintf(fminf(fmaxf(g, 0.0f), 255.0f));
    bgr[3 * i + 2] = (unsigned char)rintf(fminf(fmaxf(r, 0.0f), 255.0f));
}

}  // extern "C"
