// Batched Florence-2 preprocessing: RGB8 / NV12 frames of any size -> resized,
// normalized CHW planes (FP32 or FP16), bit-exact with the CPU path.
//
// The resize is Pillow's fixed-point separable bicubic filter (libImaging/Resample.c),
// two one-dimensional passes, each clipped to u8, in Pillow 13's order (per frame):
// horizontal first over only the source rows the vertical pass reads (Pillow's
// ybox trimming), or, when the height shrinks by more than twice as many pixels as the
// width (`PassOrder::VerticalFirst`), vertical first over the whole source. The host computes the integer tap tables once (exactly as
// the CPU twin does) and uploads them; the kernels only do integer multiply-adds, so the
// u8 result is identical. Normalisation maps each (channel, byte) through the CPU twin's
// own 3x256 table of float32((double)v * rescale), then (x - mean) / std in float32
// (`Preprocessor::lut_f32`), so the float values are the same bits by construction; the
// FP16 kernel reads the same table rounded on the host with `half::f16::from_f32`
// (nearest even), as the CPU twin's FP16 path does. The 3 KiB tables stay in L1.
//
// Layouts shared with the host (src/gpu/preprocess.rs, #[repr(C)], size-checked there).

#define PRECISION_BITS 22

struct TapTable {
    unsigned int bounds_offset;  // index of the first (first input, tap count) pair
    unsigned int coeff_offset;   // index of the first coefficient
    unsigned int ksize;          // coefficients per output sample
    unsigned int out_size;       // output samples along this axis
};

struct PreprocessItem {
    unsigned long long src;        // RGB8 pixels or NV12 luma plane (device address)
    unsigned long long src_uv;     // NV12 interleaved chroma plane, 0 for RGB8
    unsigned long long tmp_offset; // byte offset of this item's horizontally resized rows
    unsigned int format;           // 0 = RGB8, 1 = NV12
    unsigned int width;
    unsigned int height;
    unsigned int stride;           // bytes per row (RGB8 or luma)
    unsigned int uv_stride;        // bytes per chroma row
    unsigned int row_first;        // first source row the vertical pass reads
    unsigned int rows;             // rows of the intermediate image
    unsigned int vertical_first;   // 1: vertical pass first (intermediate is dst_h x width)
    TapTable horizontal;
    TapTable vertical;
};

// Integer YUV -> RGB (limited range), the CPU twin's formula (preprocess::YuvToRgbCoeffs):
// c = y*(Y - 16) + 128, d = U - 128, e = V - 128,
// R = (c + rv*e) >> 8, G = (c - gu*d - gv*e) >> 8, B = (c + bu*d) >> 8, clamped to [0, 255].
struct YuvCoeffs {
    int y;
    int rv;
    int gu;
    int gv;
    int bu;
};

__device__ __forceinline__ unsigned char clip8(int v) {
    int s = v >> PRECISION_BITS;
    return (unsigned char)(s < 0 ? 0 : (s > 255 ? 255 : s));
}

__device__ __forceinline__ int clamp255(int v) {
    return v < 0 ? 0 : (v > 255 ? 255 : v);
}

__device__ __forceinline__ void yuv_to_rgb(const YuvCoeffs& m, int y, int u, int v, int* rgb) {
    const int c = m.y * (y - 16) + 128;
    const int d = u - 128;
    const int e = v - 128;
    rgb[0] = clamp255((c + m.rv * e) >> 8);
    rgb[1] = clamp255((c - m.gu * d - m.gv * e) >> 8);
    rgb[2] = clamp255((c + m.bu * d) >> 8);
}

// Source pixel (x, y) as RGB: RGB8 directly, NV12 through the integer matrix (one
// chroma pair per 2x2 block), which is what converting the frame first computes.
__device__ __forceinline__ void source_rgb(
    const PreprocessItem& it, const YuvCoeffs& yuv, unsigned int x, unsigned int y, int* rgb)
{
    if (it.format == 0) {
        const unsigned char* p = (const unsigned char*)it.src + (size_t)y * it.stride + (size_t)x * 3;
        rgb[0] = p[0];
        rgb[1] = p[1];
        rgb[2] = p[2];
    } else {
        const unsigned char* luma = (const unsigned char*)it.src + (size_t)y * it.stride;
        const unsigned char* uv =
            (const unsigned char*)it.src_uv + (size_t)(y >> 1) * it.uv_stride + (size_t)(x >> 1) * 2;
        yuv_to_rgb(yuv, luma[x], uv[0], uv[1], rgb);
    }
}

__device__ __forceinline__ void store_clipped(unsigned char* o, int s0, int s1, int s2) {
    o[0] = clip8(s0);
    o[1] = clip8(s1);
    o[2] = clip8(s2);
}

// First pass, source -> intermediate u8 image, one thread per intermediate pixel:
// horizontal-first frames: (output column, trimmed source row), intermediate dst_w wide;
// vertical-first frames: (source column, output row), intermediate `width` wide.
extern "C" __global__ void resize_first_pass_u8(
    const PreprocessItem* __restrict__ items,
    const uint2* __restrict__ bounds,
    const int* __restrict__ coeffs,
    YuvCoeffs yuv,
    unsigned char* __restrict__ tmp)
{
    const PreprocessItem& it = items[blockIdx.z];
    const unsigned int r = blockIdx.y;
    const unsigned int c = blockIdx.x * blockDim.x + threadIdx.x;
    int s0 = 1 << (PRECISION_BITS - 1);
    int s1 = s0;
    int s2 = s0;
    int rgb[3];
    if (it.vertical_first == 0) {
        if (r >= it.rows || c >= it.horizontal.out_size) {
            return;
        }
        const uint2 b = bounds[it.horizontal.bounds_offset + c];
        const int* k = coeffs + it.horizontal.coeff_offset + (size_t)c * it.horizontal.ksize;
        const unsigned int y = it.row_first + r;
        for (unsigned int x = 0; x < b.y; ++x) {
            source_rgb(it, yuv, b.x + x, y, rgb);
            const int w = k[x];
            s0 += rgb[0] * w;
            s1 += rgb[1] * w;
            s2 += rgb[2] * w;
        }
        store_clipped(tmp + it.tmp_offset + ((size_t)r * it.horizontal.out_size + c) * 3, s0, s1, s2);
    } else {
        if (r >= it.vertical.out_size || c >= it.width) {
            return;
        }
        const uint2 b = bounds[it.vertical.bounds_offset + r];
        const int* k = coeffs + it.vertical.coeff_offset + (size_t)r * it.vertical.ksize;
        for (unsigned int y = 0; y < b.y; ++y) {
            source_rgb(it, yuv, c, b.x + y, rgb);
            const int w = k[y];
            s0 += rgb[0] * w;
            s1 += rgb[1] * w;
            s2 += rgb[2] * w;
        }
        store_clipped(tmp + it.tmp_offset + ((size_t)r * it.width + c) * 3, s0, s1, s2);
    }
}

// Second pass for output pixel (xx, yy): vertical over the intermediate rows
// (horizontal-first) or horizontal along intermediate row yy (vertical-first).
__device__ __forceinline__ void second_pass_u8(
    const PreprocessItem& it, const uint2* bounds, const int* coeffs, const unsigned char* tmp,
    unsigned int xx, unsigned int yy, unsigned char* rgb)
{
    int s0 = 1 << (PRECISION_BITS - 1);
    int s1 = s0;
    int s2 = s0;
    if (it.vertical_first == 0) {
        const unsigned int w = it.horizontal.out_size;
        const uint2 b = bounds[it.vertical.bounds_offset + yy];
        const int* k = coeffs + it.vertical.coeff_offset + (size_t)yy * it.vertical.ksize;
        const unsigned char* col = tmp + it.tmp_offset + ((size_t)(b.x - it.row_first) * w + xx) * 3;
        for (unsigned int y = 0; y < b.y; ++y) {
            const unsigned char* p = col + (size_t)y * w * 3;
            const int c = k[y];
            s0 += (int)p[0] * c;
            s1 += (int)p[1] * c;
            s2 += (int)p[2] * c;
        }
    } else {
        const uint2 b = bounds[it.horizontal.bounds_offset + xx];
        const int* k = coeffs + it.horizontal.coeff_offset + (size_t)xx * it.horizontal.ksize;
        const unsigned char* row = tmp + it.tmp_offset + ((size_t)yy * it.width + b.x) * 3;
        for (unsigned int x = 0; x < b.y; ++x) {
            const unsigned char* p = row + (size_t)x * 3;
            const int c = k[x];
            s0 += (int)p[0] * c;
            s1 += (int)p[1] * c;
            s2 += (int)p[2] * c;
        }
    }
    rgb[0] = clip8(s0);
    rgb[1] = clip8(s1);
    rgb[2] = clip8(s2);
}

// One thread per (output column, output row, item); writes the three CHW planes.
extern "C" __global__ void resize_second_pass_f32(
    const PreprocessItem* __restrict__ items,
    const uint2* __restrict__ bounds,
    const int* __restrict__ coeffs,
    const unsigned char* __restrict__ tmp,
    const float* __restrict__ lut,
    float* __restrict__ out)
{
    const PreprocessItem& it = items[blockIdx.z];
    const unsigned int xx = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int yy = blockIdx.y;
    const unsigned int w = it.horizontal.out_size;
    const unsigned int h = it.vertical.out_size;
    if (xx >= w || yy >= h) {
        return;
    }
    unsigned char rgb[3];
    second_pass_u8(it, bounds, coeffs, tmp, xx, yy, rgb);
    const size_t plane = (size_t)w * h;
    float* o = out + (size_t)blockIdx.z * 3 * plane + (size_t)yy * w + xx;
    o[0] = __ldg(&lut[rgb[0]]);
    o[plane] = __ldg(&lut[256 + rgb[1]]);
    o[2 * plane] = __ldg(&lut[512 + rgb[2]]);
}

extern "C" __global__ void resize_second_pass_f16(
    const PreprocessItem* __restrict__ items,
    const uint2* __restrict__ bounds,
    const int* __restrict__ coeffs,
    const unsigned char* __restrict__ tmp,
    const unsigned short* __restrict__ lut,
    unsigned short* __restrict__ out)
{
    const PreprocessItem& it = items[blockIdx.z];
    const unsigned int xx = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int yy = blockIdx.y;
    const unsigned int w = it.horizontal.out_size;
    const unsigned int h = it.vertical.out_size;
    if (xx >= w || yy >= h) {
        return;
    }
    unsigned char rgb[3];
    second_pass_u8(it, bounds, coeffs, tmp, xx, yy, rgb);
    const size_t plane = (size_t)w * h;
    unsigned short* o = out + (size_t)blockIdx.z * 3 * plane + (size_t)yy * w + xx;
    o[0] = __ldg(&lut[rgb[0]]);
    o[plane] = __ldg(&lut[256 + rgb[1]]);
    o[2 * plane] = __ldg(&lut[512 + rgb[2]]);
}

// The u8 result of the resize, packed RGB per item (dst_w * dst_h * 3 bytes each); used to
// check the resize on its own against the CPU twin (max error must be 0).
extern "C" __global__ void resize_second_pass_u8(
    const PreprocessItem* __restrict__ items,
    const uint2* __restrict__ bounds,
    const int* __restrict__ coeffs,
    const unsigned char* __restrict__ tmp,
    unsigned char* __restrict__ out)
{
    const PreprocessItem& it = items[blockIdx.z];
    const unsigned int xx = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned int yy = blockIdx.y;
    const unsigned int w = it.horizontal.out_size;
    const unsigned int h = it.vertical.out_size;
    if (xx >= w || yy >= h) {
        return;
    }
    unsigned char rgb[3];
    second_pass_u8(it, bounds, coeffs, tmp, xx, yy, rgb);
    unsigned char* o = out + ((size_t)blockIdx.z * h * w + (size_t)yy * w + xx) * 3;
    o[0] = rgb[0];
    o[1] = rgb[1];
    o[2] = rgb[2];
}
