// Causal attention without the scores in memory (FlashAttention-2, Dao 2023): the forward
// pass, which leaves each row's log-sum-exp, and its backward pass in three kernels (each
// row's dO·O; dK and dV a block of keys at a time; dQ a block of queries at a time), for
// bf16 operands on tensor cores (sm_80 and later).
//
// Compiled at run time by NVRTC with -DHEAD_DIM=64 or 128 (sdpa/flash.rs). No headers: the
// tensor-core products, ldmatrix, cp.async, shuffles and exp2 are PTX.
//
// A block of four warps owns 64 rows (queries, or keys in the dK/dV kernel), a warp 16 of
// them; the other operand streams through shared memory 64 rows at a time. Scores live in
// registers as mma.sync m16n8k16 accumulators, whose layout is also the A operand's of the
// next product, so probabilities go from one product to the next without shared memory.
// Shared tiles are padded to HEAD_DIM + 8 elements a row: ldmatrix's eight row addresses then
// fall in eight different groups of banks. A tile is named by its shared-memory address (a
// 32-bit byte offset), so each lane's address of a fragment is a constant away from one
// register and the tensor-core products are not buried in address arithmetic.
//
// The causal mask costs compares and selects on every score, so only the blocks it touches
// (those crossing the diagonal, or past the last key or query) apply it.
//
// Scores are kept in log2 units: s = q·k·scale·log2(e), softmax = 2^(s − lse), with lse the
// row's log2-sum-exp2, written by the forward pass and read by the backward one.

typedef unsigned short bf16;
typedef unsigned int u32;

#define TILE 64
#define THREADS 128
#ifndef M_TILES
#define M_TILES 1  // the forward pass's m16 row tiles a warp (1 or 2)
#endif
#define Q_ROWS (64 * M_TILES)  // the forward pass's query rows a block
#ifndef KEYS
#define KEYS 64  // the forward pass's keys a step (64 or 32)
#endif
#ifndef PIPELINE
#define PIPELINE 1  // the backward kernels fetch the next block's tiles while computing
#endif
#define STAGES (PIPELINE ? 2 : 1)
#define PITCH (HEAD_DIM + 8)
#define TILE_BYTES (TILE * PITCH * 2)
#define KSTEPS (HEAD_DIM / 16)
#define NEG_INF (__uint_as_float(0xff800000u))
#define POS_INF (__uint_as_float(0x7f800000u))

struct Layout {
    long long batch, head, row;  // strides in elements; the head dimension is contiguous
};

// Everything a kernel reads; one struct passed by value to each kernel (sdpa/flash.rs mirrors
// it with #[repr(C)]).
struct Problem {
    const bf16* q;
    const bf16* k;
    const bf16* v;
    const bf16* o;
    const bf16* d_o;
    bf16* out;
    float* lse;    // [batch, heads, seq_q], contiguous
    float* delta;  // [batch, heads, seq_q], contiguous: rowsum(dO ⊙ O)
    bf16* dq;
    bf16* dk;
    bf16* dv;
    Layout q_l, k_l, v_l, o_l, do_l, out_l, dq_l, dk_l, dv_l;
    int batch, seq_q, seq_k;
    int start;   // key j is visible to query i when j <= i + start
    int group;   // query heads a key/value head serves
    int heads;   // query heads
    float scale_log2;  // softmax scale · log2(e)
    float scale;
};

// The rows of head `head` of batch `b` of a tensor laid out by `l`.
template <typename T>
__device__ __forceinline__ T* head_rows(T* base, const Layout& l, int b, int head) {
    return base + b * l.batch + head * l.head;
}

__device__ __forceinline__ u32 smem_address(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// Runs `body(true)` or `body(false)`: inlined with a constant, each call is its own copy of a
// block's score loop, the mask's compares only in the copy that needs them. The choice is made
// from block-wide values, so the compiler knows the warp takes one branch as a whole (no
// divergence around the shuffles).
template <typename Body>
__device__ __forceinline__ void masked_or_not(bool masked, Body body) {
    if (masked) {
        body(true);
    } else {
        body(false);
    }
}

__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.wait_all;" ::: "memory");
}

// Four 8×8 matrices: lanes 8m..8m+7 give the rows of matrix m, each lane gets row lane/4,
// columns 2(lane%4) and 2(lane%4)+1 of every matrix (transposed with .trans).
__device__ __forceinline__ void ldsm_x4(u32* r, u32 address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

__device__ __forceinline__ void ldsm_x4_trans(u32* r, u32 address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// The shared address of element (row, col) of a padded tile.
__device__ __forceinline__ u32 at(u32 tile, int row, int col) {
    return tile + (row * PITCH + col) * 2;
}

// c += a·b, a 16×16 (row-major fragments), b 16×8 (column-major), c 16×8 in f32.
__device__ __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as two bf16 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ u32 pack(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float log2_approx(float x) {
    float y;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float shfl_xor(float x, int lanes) {
    float y;
    asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;" : "=f"(y) : "f"(x), "r"(lanes));
    return y;
}

__device__ __forceinline__ float bf16_to_float(bf16 x) { return __uint_as_float(((u32)x) << 16); }

// Rows [row0, row0 + COUNT) of a [rows, HEAD_DIM] matrix into a padded shared tile, zeros
// past `rows`; asynchronous (cp.async), the caller commits and waits. Each thread copies the
// same 16 bytes of every (THREADS / chunks)-th row, so its addresses step by a constant; a
// row past the end reads nothing (cp.async's source size 0), so its address is never used.
template <int COUNT>
__device__ __forceinline__ void load_rows(u32 tile, const bf16* src, long long row_stride,
                                          int row0, int rows) {
    constexpr int chunks = HEAD_DIM / 8;  // 16 bytes each
    constexpr int rows_a_pass = THREADS / chunks;
    const int r = threadIdx.x / chunks, col = (threadIdx.x % chunks) * 8;
    const bf16* from = src + (long long)(row0 + r) * row_stride + col;
#pragma unroll
    for (int pass = 0; pass < COUNT / rows_a_pass; ++pass) {
        const int row = r + pass * rows_a_pass;
        cp_async16(at(tile, row, col), from + pass * rows_a_pass * row_stride, row0 + row < rows);
    }
}

// The A fragments of rows [row, row + 16), columns [16·ks, 16·ks + 16) of a tile.
__device__ __forceinline__ void load_a(u32* a, u32 tile, int row, int ks, int lane) {
    ldsm_x4(a, at(tile, row + (lane & 15), ks * 16 + (lane >> 4) * 8));
}

// The B fragments of two 8-wide column tiles of `tile`ᵀ: rows (keys) [n0, n0 + 16), the
// reduction columns [16·ks, 16·ks + 16). r[0..2] serve keys n0..n0+7, r[2..4] n0+8..n0+15.
__device__ __forceinline__ void load_b_rows(u32* r, u32 tile, int n0, int ks, int lane) {
    ldsm_x4(r, at(tile, n0 + (lane & 7) + ((lane >> 4) << 3), ks * 16 + ((lane >> 3) & 1) * 8));
}

// The B fragments of two 8-wide column tiles of `tile` itself: reduction rows [k0, k0 + 16),
// columns [n0, n0 + 16). r[0..2] serve columns n0..n0+7, r[2..4] n0+8..n0+15.
__device__ __forceinline__ void load_b_cols(u32* r, u32 tile, int k0, int n0, int lane) {
    ldsm_x4_trans(r, at(tile, k0 + (lane & 7) + ((lane >> 3) & 1) * 8, n0 + (lane >> 4) * 8));
}

// Sets N accumulator tiles to zero.
template <int N>
__device__ __forceinline__ void zero(float (*acc)[4]) {
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// acc (16 × 64, f32, 8 tiles of 8 columns) as the A fragments of four 16 × 16 steps, in bf16.
__device__ __forceinline__ void as_a(u32 (*a)[4], const float (*acc)[4]) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
        a[kk][0] = pack(acc[2 * kk][0], acc[2 * kk][1]);
        a[kk][1] = pack(acc[2 * kk][2], acc[2 * kk][3]);
        a[kk][2] = pack(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
        a[kk][3] = pack(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
    }
}

// acc (16 × 64) += A (16 × HEAD_DIM, fragments in registers or a tile) · Bᵀ where B is 64
// rows of `tile` (keys), reduction over the head dimension.
__device__ __forceinline__ void product_rows(float (*acc)[4], u32 a_tile, int a_row, u32 b_tile,
                                             int lane) {
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks) {
        u32 a[4];
        load_a(a, a_tile, a_row, ks, lane);
#pragma unroll
        for (int np = 0; np < TILE / 16; ++np) {
            u32 b[4];
            load_b_rows(b, b_tile, np * 16, ks, lane);
            mma(acc[2 * np], a, b[0], b[1]);
            mma(acc[2 * np + 1], a, b[2], b[3]);
        }
    }
}

// acc (16 × HEAD_DIM) += A (16 × 64, fragments) · B (64 rows of `tile`, HEAD_DIM columns).
__device__ __forceinline__ void product_cols(float (*acc)[4], const u32 (*a)[4], u32 b_tile,
                                             int lane) {
#pragma unroll
    for (int kk = 0; kk < TILE / 16; ++kk) {
#pragma unroll
        for (int dp = 0; dp < HEAD_DIM / 16; ++dp) {
            u32 b[4];
            load_b_cols(b, b_tile, kk * 16, dp * 16, lane);
            mma(acc[2 * dp], a[kk], b[0], b[1]);
            mma(acc[2 * dp + 1], a[kk], b[2], b[3]);
        }
    }
}

// Writes a warp's 16 × HEAD_DIM accumulator times `factor` as bf16 rows [row0, row0 + 16)
// (those under `rows`) of a matrix with `row_stride`.
__device__ __forceinline__ void store_rows(bf16* dst, long long row_stride, int row0, int rows,
                                           const float (*acc)[4], const float* factor, int lane) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + g + half * 8;
        if (row < rows) {
            u32* out = (u32*)(dst + (long long)row * row_stride);
#pragma unroll
            for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
                out[dt * 4 + t] = pack(acc[dt][2 * half] * factor[half],
                                       acc[dt][2 * half + 1] * factor[half]);
            }
        }
    }
}

// Blocks of `keys` keys that some query of the rows [q0, q0 + rows) sees.
__device__ __forceinline__ int key_blocks(const Problem& p, int q0, int rows, int keys) {
    const int keys_seen = min(p.seq_k, q0 + rows + p.start);
    return (keys_seen + keys - 1) / keys;
}

// The forward pass: a block owns 64·M_TILES query rows, a warp 16·M_TILES of them (M_TILES
// m16 tiles), so each key and value fragment read from shared memory feeds M_TILES products;
// keys and values stream KEYS rows at a time.
extern "C" __global__ void __launch_bounds__(THREADS) flash_forward(const Problem p) {
    extern __shared__ __align__(16) unsigned char shared[];
    const u32 sq = smem_address(shared);
    const u32 sk = sq + Q_ROWS * PITCH * 2;
    const u32 sv = sk + KEYS * PITCH * 2;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    // The longest rows (most key blocks) first.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * Q_ROWS;
    const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group;
    const bf16* k = head_rows(p.k, p.k_l, b, hk);
    const bf16* v = head_rows(p.v, p.v_l, b, hk);
    load_rows<Q_ROWS>(sq, head_rows(p.q, p.q_l, b, h), p.q_l.row, q0, p.seq_q);
    load_rows<KEYS>(sk, k, p.k_l.row, 0, p.seq_k);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    float o[M_TILES][HEAD_DIM / 8][4];
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) zero<HEAD_DIM / 8>(o[mt]);
    float m[M_TILES][2], l[M_TILES][2];  // each row's running maximum (log2 units) and sum
#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) m[mt][0] = m[mt][1] = NEG_INF, l[mt][0] = l[mt][1] = 0.f;
    const int warp_row = warp * 16 * M_TILES;
    const int first_row = q0 + warp_row;  // the warp's first query
    const int blocks = key_blocks(p, q0, Q_ROWS, KEYS);
    for (int kb = 0; kb < blocks; ++kb) {
        const int k0 = kb * KEYS;
        load_rows<KEYS>(sv, v, p.v_l.row, k0, p.seq_k);
        cp_async_commit();

        float s[M_TILES][KEYS / 8][4];
#pragma unroll
        for (int mt = 0; mt < M_TILES; ++mt) zero<KEYS / 8>(s[mt]);
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            u32 qa[M_TILES][4];
#pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) load_a(qa[mt], sq, warp_row + mt * 16, ks, lane);
#pragma unroll
            for (int np = 0; np < KEYS / 16; ++np) {
                u32 bk[4];
                load_b_rows(bk, sk, np * 16, ks, lane);
#pragma unroll
                for (int mt = 0; mt < M_TILES; ++mt) {
                    mma(s[mt][2 * np], qa[mt], bk[0], bk[1]);
                    mma(s[mt][2 * np + 1], qa[mt], bk[2], bk[3]);
                }
            }
        }
        // Online softmax, two rows a thread and m tile (g and g + 8), each row spread over a
        // quad of lanes. The scale is applied inside the exponent's multiply-add.
        masked_or_not(k0 + KEYS - 1 > q0 + p.start || k0 + KEYS > p.seq_k, [&](bool mask) {
#pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int row = first_row + mt * 16 + g + half * 8;
                    float row_max = NEG_INF;
#pragma unroll
                    for (int nt = 0; nt < KEYS / 8; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            float& x = s[mt][nt][2 * half + e];
                            const int col = k0 + nt * 8 + 2 * t + e;
                            if (mask && (col > row + p.start || col >= p.seq_k)) {
                                x = NEG_INF;
                            }
                            row_max = fmaxf(row_max, x);
                        }
                    }
                    row_max = fmaxf(row_max, shfl_xor(row_max, 1));
                    row_max = fmaxf(row_max, shfl_xor(row_max, 2));
                    const float m_new = fmaxf(m[mt][half], row_max * p.scale_log2);
                    const float shift = m_new == NEG_INF ? 0.f : m_new;
                    const float alpha = exp2_approx(m[mt][half] - shift);
                    m[mt][half] = m_new;
                    float sum = 0.f;
#pragma unroll
                    for (int nt = 0; nt < KEYS / 8; ++nt) {
#pragma unroll
                        for (int e = 0; e < 2; ++e) {
                            float& x = s[mt][nt][2 * half + e];
                            x = exp2_approx(x * p.scale_log2 - shift);
                            sum += x;
                        }
                    }
                    l[mt][half] = l[mt][half] * alpha + sum;
#pragma unroll
                    for (int dt = 0; dt < HEAD_DIM / 8; ++dt) {
                        o[mt][dt][2 * half] *= alpha;
                        o[mt][dt][2 * half + 1] *= alpha;
                    }
                }
            }
        });
        cp_async_wait_all();
        __syncthreads();  // V is in; every warp is done with K
        if (kb + 1 < blocks) {
            load_rows<KEYS>(sk, k, p.k_l.row, k0 + KEYS, p.seq_k);
            cp_async_commit();
        }
        // O += P·V, each value fragment feeding the warp's M_TILES row tiles.
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; ++kk) {
            u32 pa[M_TILES][4];
#pragma unroll
            for (int mt = 0; mt < M_TILES; ++mt) {
                pa[mt][0] = pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < HEAD_DIM / 16; ++dp) {
                u32 bv[4];
                load_b_cols(bv, sv, kk * 16, dp * 16, lane);
#pragma unroll
                for (int mt = 0; mt < M_TILES; ++mt) {
                    mma(o[mt][2 * dp], pa[mt], bv[0], bv[1]);
                    mma(o[mt][2 * dp + 1], pa[mt], bv[2], bv[3]);
                }
            }
        }
        cp_async_wait_all();
        __syncthreads();  // the next K is in; every warp is done with V
    }

#pragma unroll
    for (int mt = 0; mt < M_TILES; ++mt) {
        float inverse[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            l[mt][half] += shfl_xor(l[mt][half], 1);
            l[mt][half] += shfl_xor(l[mt][half], 2);
            inverse[half] = 1.f / l[mt][half];
            const int row = first_row + mt * 16 + g + half * 8;
            if (t == 0 && row < p.seq_q) {
                p.lse[((long long)b * p.heads + h) * p.seq_q + row] = m[mt][half] + log2_approx(l[mt][half]);
            }
        }
        store_rows(head_rows(p.out, p.out_l, b, h), p.out_l.row,
                   first_row + mt * 16, p.seq_q, o[mt], inverse, lane);
    }
}

// delta = rowsum(dO ⊙ O) in f32, a warp a row.
extern "C" __global__ void __launch_bounds__(THREADS) flash_backward_delta(const Problem p) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (THREADS / 32) + warp;
    const long long rows = (long long)p.batch * p.heads * p.seq_q;
    if (row >= rows) return;
    const int i = row % p.seq_q;
    const int h = (row / p.seq_q) % p.heads;
    const int b = row / ((long long)p.seq_q * p.heads);
    const bf16* o = head_rows(p.o, p.o_l, b, h) + i * p.o_l.row;
    const bf16* d_o = head_rows(p.d_o, p.do_l, b, h) + i * p.do_l.row;
    float sum = 0.f;
    for (int c = lane; c < HEAD_DIM; c += 32) sum += bf16_to_float(o[c]) * bf16_to_float(d_o[c]);
#pragma unroll
    for (int lanes = 16; lanes > 0; lanes >>= 1) sum += shfl_xor(sum, lanes);
    if (lane == 0) p.delta[row] = sum;
}

// dK and dV of 64 keys of one key/value head, summed over the query heads it serves and the
// query blocks that see them: Pᵀ and dPᵀ recomputed a query block at a time. With PIPELINE
// the next query block's Q and dO arrive while this one's are used.
extern "C" __global__ void __launch_bounds__(THREADS) flash_backward_dkdv(const Problem p) {
    extern __shared__ __align__(16) unsigned char shared[];
    const u32 sk = smem_address(shared);
    const u32 sv = sk + TILE_BYTES;
    const u32 staged = sv + TILE_BYTES;  // STAGES × (Q, dO)
    float* stats = (float*)(shared + (2 + STAGES * 2) * TILE_BYTES);  // STAGES × (lse, delta)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int k0 = blockIdx.x * TILE;
    const int hk = blockIdx.y, b = blockIdx.z;
    load_rows<TILE>(sk, head_rows(p.k, p.k_l, b, hk), p.k_l.row, k0, p.seq_k);
    load_rows<TILE>(sv, head_rows(p.v, p.v_l, b, hk), p.v_l.row, k0, p.seq_k);

    float dk[HEAD_DIM / 8][4], dv[HEAD_DIM / 8][4];
    zero<HEAD_DIM / 8>(dk);
    zero<HEAD_DIM / 8>(dv);
    const int first_key = k0 + warp * 16;  // the warp's first key
    const int first_block = max(0, k0 - p.start) / TILE;
    const int q_blocks = (p.seq_q + TILE - 1) / TILE - first_block;
    // Step `it` reads query block first_block + it % q_blocks of the group's head it / q_blocks.
    auto fetch = [&](int it, int stage) {
        const int h = hk * p.group + it / q_blocks, q0 = (first_block + it % q_blocks) * TILE;
        const u32 sq = staged + stage * 2 * TILE_BYTES;
        load_rows<TILE>(sq, head_rows(p.q, p.q_l, b, h), p.q_l.row, q0, p.seq_q);
        load_rows<TILE>(sq + TILE_BYTES, head_rows(p.d_o, p.do_l, b, h), p.do_l.row, q0,
                  p.seq_q);
        cp_async_commit();
        if (threadIdx.x < TILE) {
            const long long row0 = ((long long)b * p.heads + h) * p.seq_q;
            const int i = q0 + threadIdx.x;
            stats[stage * 2 * TILE + threadIdx.x] = i < p.seq_q ? p.lse[row0 + i] : POS_INF;
            stats[stage * 2 * TILE + TILE + threadIdx.x] = i < p.seq_q ? p.delta[row0 + i] : 0.f;
        }
    };
    const int steps = p.group * q_blocks;
    if (steps > 0) fetch(0, 0);
    for (int it = 0; it < steps; ++it) {
        const int stage = it % STAGES;
        if (STAGES == 1 && it > 0) fetch(it, 0);
        cp_async_wait_all();
        __syncthreads();  // this step's tiles are in; every warp is done with the other stage
        if (STAGES == 2 && it + 1 < steps) fetch(it + 1, stage ^ 1);
        const int q0 = (first_block + it % q_blocks) * TILE;
        const u32 sq = staged + stage * 2 * TILE_BYTES;
        const u32 sdo = sq + TILE_BYTES;
        const float* s_lse = stats + stage * 2 * TILE;
        const float* s_delta = s_lse + TILE;

        // Pᵀ (16 keys × 64 queries) = 2^(K·Qᵀ·scale·log2e − lse).
        float pt[TILE / 8][4];
        zero<TILE / 8>(pt);
        product_rows(pt, sk, warp * 16, sq, lane);
        masked_or_not(k0 + TILE - 1 > q0 + p.start || q0 + TILE > p.seq_q, [&](bool mask) {
#pragma unroll
            for (int nt = 0; nt < TILE / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int c = nt * 8 + 2 * t + (e & 1);
                    const int query = q0 + c, key = first_key + g + (e >> 1) * 8;
                    const bool hidden = key > query + p.start || query >= p.seq_q;
                    pt[nt][e] = mask && hidden
                                    ? 0.f
                                    : exp2_approx(pt[nt][e] * p.scale_log2 - s_lse[c]);
                }
            }
        });
        u32 a[TILE / 16][4];
        as_a(a, pt);
        product_cols(dv, a, sdo, lane);  // dV += Pᵀ·dO

        // dPᵀ = V·dOᵀ, then dSᵀ = Pᵀ ⊙ (dPᵀ − delta).
        float ds[TILE / 8][4];
        zero<TILE / 8>(ds);
        product_rows(ds, sv, warp * 16, sdo, lane);
#pragma unroll
        for (int nt = 0; nt < TILE / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                ds[nt][e] = pt[nt][e] * (ds[nt][e] - s_delta[nt * 8 + 2 * t + (e & 1)]);
            }
        }
        as_a(a, ds);
        product_cols(dk, a, sq, lane);  // dK += dSᵀ·Q
        if (STAGES == 1) __syncthreads();  // every warp is done with this step's Q and dO
    }
    cp_async_wait_all();  // K and V, when no query block sees these keys
    const float unit[2] = {1.f, 1.f}, scale[2] = {p.scale, p.scale};
    store_rows(head_rows(p.dk, p.dk_l, b, hk), p.dk_l.row, k0 + warp * 16, p.seq_k,
               dk, scale, lane);
    store_rows(head_rows(p.dv, p.dv_l, b, hk), p.dv_l.row, k0 + warp * 16, p.seq_k,
               dv, unit, lane);
}

// dQ of 64 queries of one head: P and dP recomputed a key block at a time. With PIPELINE the
// next key block's K and V arrive while this one's are used.
extern "C" __global__ void __launch_bounds__(THREADS) flash_backward_dq(const Problem p) {
    extern __shared__ __align__(16) unsigned char shared[];
    const u32 sq = smem_address(shared);
    const u32 sdo = sq + TILE_BYTES;
    const u32 staged = sdo + TILE_BYTES;  // STAGES × (K, V)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * TILE;
    const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group;
    const bf16* k = head_rows(p.k, p.k_l, b, hk);
    const bf16* v = head_rows(p.v, p.v_l, b, hk);
    load_rows<TILE>(sq, head_rows(p.q, p.q_l, b, h), p.q_l.row, q0, p.seq_q);
    load_rows<TILE>(sdo, head_rows(p.d_o, p.do_l, b, h), p.do_l.row, q0, p.seq_q);
    const int first_row = q0 + warp * 16;  // the warp's first query
    const int row0 = first_row + g;
    const long long stats = ((long long)b * p.heads + h) * p.seq_q;
    float lse[2], delta[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int row = row0 + half * 8;
        lse[half] = row < p.seq_q ? p.lse[stats + row] : POS_INF;
        delta[half] = row < p.seq_q ? p.delta[stats + row] : 0.f;
    }
    auto fetch = [&](int kb, int stage) {
        const u32 sk = staged + stage * 2 * TILE_BYTES;
        load_rows<TILE>(sk, k, p.k_l.row, kb * TILE, p.seq_k);
        load_rows<TILE>(sk + TILE_BYTES, v, p.v_l.row, kb * TILE, p.seq_k);
        cp_async_commit();
    };

    float dq[HEAD_DIM / 8][4];
    zero<HEAD_DIM / 8>(dq);
    const int blocks = key_blocks(p, q0, TILE, TILE);
    fetch(0, 0);
    for (int kb = 0; kb < blocks; ++kb) {
        const int stage = kb % STAGES;
        if (STAGES == 1 && kb > 0) fetch(kb, 0);
        cp_async_wait_all();
        __syncthreads();  // this block's tiles are in; every warp is done with the other stage
        if (STAGES == 2 && kb + 1 < blocks) fetch(kb + 1, stage ^ 1);
        const int k0 = kb * TILE;
        const u32 sk = staged + stage * 2 * TILE_BYTES;
        const u32 sv = sk + TILE_BYTES;

        float s[TILE / 8][4], dp[TILE / 8][4];
        zero<TILE / 8>(s);
        zero<TILE / 8>(dp);
        product_rows(s, sq, warp * 16, sk, lane);   // S = Q·Kᵀ
        product_rows(dp, sdo, warp * 16, sv, lane); // dP = dO·Vᵀ
        masked_or_not(k0 + TILE - 1 > q0 + p.start || k0 + TILE > p.seq_k, [&](bool mask) {
#pragma unroll
            for (int nt = 0; nt < TILE / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int half = e >> 1;
                    const int col = k0 + nt * 8 + 2 * t + (e & 1), row = row0 + half * 8;
                    const bool hidden = col > row + p.start || col >= p.seq_k;
                    const float pr = mask && hidden
                                         ? 0.f
                                         : exp2_approx(s[nt][e] * p.scale_log2 - lse[half]);
                    dp[nt][e] = pr * (dp[nt][e] - delta[half]);
                }
            }
        });
        u32 a[TILE / 16][4];
        as_a(a, dp);
        product_cols(dq, a, sk, lane);  // dQ += dS·K
        if (STAGES == 1) __syncthreads();  // every warp is done with this block's K and V
    }
    const float scale[2] = {p.scale, p.scale};
    store_rows(head_rows(p.dq, p.dq_l, b, h), p.dq_l.row, q0 + warp * 16, p.seq_q,
               dq, scale, lane);
}
