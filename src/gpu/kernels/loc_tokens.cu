// Location tokens from generated ids, for a padded batch of sequences.
// CPU twin and the meaning of every field: src/postprocess/loc_ids.rs.
//
// One block per sequence. Every thread takes token positions with a block-wide
// stride; for a location token it walks back and forward to the ends of its run
// (runs are short: at most a few hundred tokens for a polygon), so no inter-thread
// communication is needed except for the per-sequence counters, which are integer
// atomics and therefore deterministic.

struct SequenceInfo {
    float image_width;
    float image_height;
    unsigned int length;
    unsigned int group_len;  // 0 none, 2 polygon points, 4 boxes, 8 quad boxes
};

struct LocationToken {
    int bin;
    int run_start;
    int run_len;
    int group;
    unsigned int axis;
    unsigned int complete;
    float coord_px;
    float coord_norm;
};

struct LocationSummary {
    unsigned int location_tokens;
    unsigned int runs;
    unsigned int complete_groups;
    unsigned int malformed_groups;
};

// Unsigned difference: defined for any pair of ids (signed overflow is not), and exact
// whenever id >= loc0.
__device__ __forceinline__ int location_bin(long long id, long long loc0, unsigned int bins) {
    const unsigned long long d = (unsigned long long)id - (unsigned long long)loc0;
    return (id >= loc0 && d < (unsigned long long)bins) ? (int)d : -1;
}

extern "C" __global__ void parse_location_tokens(
    const long long* __restrict__ ids,
    unsigned int max_len,
    const SequenceInfo* __restrict__ sequences,
    long long loc0,
    unsigned int bins,
    LocationToken* __restrict__ tokens,
    LocationSummary* __restrict__ summaries)
{
    __shared__ unsigned int counts[4];
    if (threadIdx.x < 4) {
        counts[threadIdx.x] = 0;
    }
    __syncthreads();

    const SequenceInfo seq = sequences[blockIdx.x];
    const long long* s = ids + (size_t)blockIdx.x * max_len;
    const unsigned int len = seq.length < max_len ? seq.length : max_len;
    LocationToken* out = tokens + (size_t)blockIdx.x * max_len;

    for (unsigned int t = threadIdx.x; t < max_len; t += blockDim.x) {
        LocationToken o;
        o.bin = -1;
        o.run_start = -1;
        o.run_len = 0;
        o.group = -1;
        o.axis = 0;
        o.complete = 0;
        o.coord_px = 0.0f;
        o.coord_norm = 0.0f;
        const int bin = t < len ? location_bin(s[t], loc0, bins) : -1;
        if (bin >= 0) {
            unsigned int start = t;
            while (start > 0 && location_bin(s[start - 1], loc0, bins) >= 0) {
                --start;
            }
            unsigned int end = t + 1;
            while (end < len && location_bin(s[end], loc0, bins) >= 0) {
                ++end;
            }
            const unsigned int pos = t - start;
            const unsigned int run_len = end - start;
            const unsigned int axis = pos & 1u;
            const float size = axis == 0 ? seq.image_width : seq.image_height;
            const float center = __fadd_rn((float)bin, 0.5f);
            o.bin = bin;
            o.run_start = (int)start;
            o.run_len = (int)run_len;
            o.axis = axis;
            o.coord_px = __fdiv_rn(__fmul_rn(center, size), (float)bins);
            o.coord_norm = __fdiv_rn(center, (float)bins);
            atomicAdd(&counts[0], 1u);
            if (pos == 0) {
                atomicAdd(&counts[1], 1u);
            }
            if (seq.group_len > 0) {
                const unsigned int group = pos / seq.group_len;
                const bool complete = (group + 1) * seq.group_len <= run_len;
                o.group = (int)group;
                o.complete = complete ? 1u : 0u;
                if (pos % seq.group_len == 0) {
                    atomicAdd(&counts[complete ? 2 : 3], 1u);
                }
            }
        }
        out[t] = o;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        LocationSummary summary;
        summary.location_tokens = counts[0];
        summary.runs = counts[1];
        summary.complete_groups = counts[2];
        summary.malformed_groups = counts[3];
        summaries[blockIdx.x] = summary;
    }
}
