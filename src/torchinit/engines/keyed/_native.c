/*
 * torchinit keyed engine: native CPU kernel (keyed stream version 1).
 *
 * Plain CPython C-API, no torch headers, no external libraries. Python passes a
 * raw data pointer, the box geometry, a dtype code, the spec constants and the
 * Philox key; the kernel releases the GIL and splits the box over pthreads in
 * fixed-size chunks. Every element's value is a pure function of (key,
 * sub-stream, global logical index, constants), so results never depend on the
 * thread count or chunk size.
 *
 * The stream is specified in docs/keyed-stream.md; the pure-torch reference
 * backend (reference.py) implements the same operations and must give the same
 * bits. Compile with -ffp-contract=off (no FMA contraction): every + - * / sqrt
 * below is one IEEE-754 operation, rounded to nearest even.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <stdlib.h>

#define MAXD 64
#define SEG 2048 /* elements per inner batch (2048: 2-3% faster than 1024, the tail stages run longer loops) */


#define PM0 0xD2511F53u
#define PM1 0xCD9E8D57u
#define PW0 0x9E3779B9u
#define PW1 0xBB67AE85u

enum { K_UNIFORM = 0, K_NORMAL = 1, K_TRUNC = 2, K_BITS = 3 };
enum { DT_F32 = 0, DT_F64 = 1, DT_F16 = 2, DT_BF16 = 3, DT_U32 = 4 };

typedef struct {
    int kind, dtype, mode, clamp;
    uint32_t k0, k1, sub;
    double c[4];
    float cf[4];
    double lo, hi;
    float lof, hif;
    int ndim;
    int64_t gstride[MAXD], off[MAXD], size[MAXD];
    int64_t rowlen, total, chunk;
    char *out;
    int esize;
    int big; /* output of at least g_nt_min_bytes */
    int nt;  /* uniform / raw bits: non-temporal stores (from registers, or via an L1 batch) */
    int bf16_exact; /* no value can be a nonzero subnormal float32 (see no_subnormal_values) */
} job_t;

/* ---------------------------------------------------------------- constants */
/* float32 constants are the double literals rounded to float (as in Python). */
#define F(x) ((float)(x))
static const float LOGC_F[6] = {F(2.0), F(2.0 / 3.0), F(2.0 / 5.0), F(2.0 / 7.0), F(2.0 / 9.0), F(2.0 / 11.0)};
static const double LOGC_D[12] = {2.0, 2.0 / 3.0, 2.0 / 5.0, 2.0 / 7.0, 2.0 / 9.0, 2.0 / 11.0,
                                  2.0 / 13.0, 2.0 / 15.0, 2.0 / 17.0, 2.0 / 19.0, 2.0 / 21.0, 2.0 / 23.0};
#define SQRT2_D 1.4142135623730951
#define LN2HI_F 0.693145751953125
#define LN2LO_F 1.42860682030941723212e-06
#define LN2HI_D 6.93147180369123816490e-01
#define LN2LO_D 1.90821492927058770002e-10

/* AS 241 PPND7 */
#define A7_0 3.3871327179
#define A7_1 50.434271938
#define A7_2 159.29113202
#define A7_3 59.109374720
#define B7_1 17.895169469
#define B7_2 78.757757664
#define B7_3 67.187563600
#define C7_0 1.4234372777
#define C7_1 2.7568153900
#define C7_2 1.3067284816
#define C7_3 0.17023821103
#define D7_1 0.73700164250
#define D7_2 0.12021132975
#define E7_0 6.6579051150
#define E7_1 3.0812263860
#define E7_2 0.42868294337
#define E7_3 0.017337203997
#define F7_1 0.24197894225
#define F7_2 0.012258202635

/* AS 241 PPND16 */
static const double A16[8] = {3.3871328727963666080e0, 1.3314166789178437745e+2, 1.9715909503065514427e+3,
                              1.3731693765509461125e+4, 4.5921953931549871457e+4, 6.7265770927008700853e+4,
                              3.3430575583588128105e+4, 2.5090809287301226727e+3};
static const double B16[8] = {1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
                              2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4,
                              5.2264952788528545610e+3};
static const double C16[8] = {1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
                              3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
                              2.27238449892691845833e-2, 7.74545014278341407640e-4};
static const double D16[8] = {1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
                              1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
                              1.05075007164441684324e-9};
static const double E16[8] = {6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
                              2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
                              2.71155556874348757815e-5, 2.01033439929228813265e-7};
static const double F16c[8] = {1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
                               7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
                               2.04426310338993978564e-15};

/* ---------------------------------------------------------------- bit casts */
static inline float as_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline double as_d(uint64_t u) { double f; memcpy(&f, &u, 8); return f; }
static inline uint64_t as_u64(double f) { uint64_t u; memcpy(&u, &f, 8); return u; }
/* exact conversion of an integer k < 2^52 to double */
static inline double u52_to_d(uint64_t k) { return as_d(0x4330000000000000ull | k) - 0x1p52; }

/* ---------------------------------------------------------------- philox */
/* Word layout (stream v1): words come in groups of 32. Group G holds the outputs of
   Philox blocks 8G .. 8G+7: word j = 32 G + 8 lane + b is output word `lane` (0..3) of
   block 8G + b. So word j is lane (j >> 3) & 3 of block 8 (j >> 5) + (j & 7), and one
   8-wide SIMD register per lane stores contiguously (no transpose). The block number is
   the 64-bit counter (c0 = low word, c1 = high word); c2 = sub-stream; c3 = 0. */
static inline void philox1(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                            uint32_t out[4]) {
    uint32_t x0 = c0, x1 = c1, x2 = c2, x3 = c3, ka = k0, kb = k1;
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PM0 * (uint64_t)x0;
        uint64_t p1 = (uint64_t)PM1 * (uint64_t)x2;
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1 ^ ka;
        uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3 ^ kb;
        x1 = (uint32_t)p1;
        x3 = (uint32_t)p0;
        x0 = y0;
        x2 = y2;
        ka += PW0;
        kb += PW1;
    }
    out[0] = x0;
    out[1] = x1;
    out[2] = x2;
    out[3] = x3;
}

static void philox_groups_scalar(uint32_t k0, uint32_t k1, uint64_t g0, int ng, uint32_t sub, uint32_t *restrict w) {
    for (int g = 0; g < ng; g++) {
        uint64_t blk = (g0 + (uint64_t)g) * 8u;
        for (int b = 0; b < 8; b++) {
            uint32_t o[4];
            philox1(k0, k1, (uint32_t)blk + (uint32_t)b, (uint32_t)(blk >> 32), sub, 0u, o);
            for (int l = 0; l < 4; l++) w[32 * g + 8 * l + b] = o[l];
        }
    }
}

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(TORCHINIT_NO_SIMD)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* -fschedule-insns -fsched-pressure: gcc's pre-allocation scheduler interleaves the four
   independent half-states, which the default -O3 leaves grouped (measured here: 8% more
   words per second). */
#define PHX_ATTR __attribute__((target("avx2"), optimize("schedule-insns", "sched-pressure")))

/* Philox, 8 blocks wide: even blocks (0,2,4,6) and odd blocks (1,3,5,7) of a group in the
   low halves of 64-bit lanes; upper halves hold garbage that never reaches a low half
   (vpmuludq reads low halves only), so no blends are needed inside the rounds. The macros
   below expect KA/KB (round keys), M0/M1, xs2 (sub-stream), iotaE/iotaO in scope. */
#define PHX_INIT(S, blk)                                                                  \
    __m256i S##base = _mm256_set1_epi32((int)(uint32_t)(blk));                            \
    __m256i S##e0 = _mm256_add_epi32(S##base, iotaE), S##o0 = _mm256_add_epi32(S##base, iotaO); \
    __m256i S##e1 = _mm256_set1_epi32((int)(uint32_t)((blk) >> 32)), S##o1 = S##e1;       \
    __m256i S##e2 = xs2, S##o2 = xs2;                                                     \
    __m256i S##e3 = _mm256_setzero_si256(), S##o3 = S##e3;
#define PHX_HALF(x0, x1, x2, x3, r)                                                       \
    do {                                                                                  \
        __m256i a_ = _mm256_xor_si256(x1, KA[r]), b_ = _mm256_xor_si256(x3, KB[r]);       \
        __m256i p0_ = _mm256_mul_epu32(x0, M0), p1_ = _mm256_mul_epu32(x2, M1);           \
        __m256i y0_ = _mm256_xor_si256(_mm256_srli_epi64(p1_, 32), a_);                    \
        __m256i y2_ = _mm256_xor_si256(_mm256_srli_epi64(p0_, 32), b_);                    \
        x1 = p1_;                                                                         \
        x3 = p0_;                                                                         \
        x0 = y0_;                                                                         \
        x2 = y2_;                                                                         \
    } while (0)
/* The 10 rounds of two groups (four half-states a.e, a.o, b.e, b.o). On x86-64 the rounds
   are inline assembly that keeps 15 of the 16 state vectors and one scratch vector in the
   16 ymm registers and the 16th state vector (b.o's x3, only ever an xor operand) in
   memory, with the multipliers and round keys as memory operands: the intrinsics below need
   17 registers, and gcc's spills cost 11% of the words per second. The operations are the
   same: after each round the C variables are renamed (no data moves) so that name = role. */
#if defined(__x86_64__) && !defined(TORCHINIT_NO_ASM)
#define PHX_ASM_HALF(x0, x1, x2, x3)                                                        \
    "vpxor %[ka], %[" #x1 "], %[" #x1 "]\n\t"                                               \
    "vpxor %[kb], %[" #x3 "], %[" #x3 "]\n\t"                                               \
    "vpmuludq %[m0], %[" #x0 "], %[" #x0 "]\n\t"                                            \
    "vpmuludq %[m1], %[" #x2 "], %[" #x2 "]\n\t"                                            \
    "vpsrlq $32, %[" #x2 "], %[t]\n\t"                                                      \
    "vpxor %[t], %[" #x1 "], %[" #x1 "]\n\t"                                                \
    "vpsrlq $32, %[" #x0 "], %[t]\n\t"                                                      \
    "vpxor %[t], %[" #x3 "], %[" #x3 "]\n\t"
#define PHX_ROT4(a0, a1, a2, a3)                                                            \
    do {                                                                                    \
        __m256i t_ = a0;                                                                    \
        a0 = a1;                                                                            \
        a1 = a2;                                                                            \
        a2 = a3;                                                                            \
        a3 = t_;                                                                            \
    } while (0)
#define PHX_ROUNDS2(KA, KB)                                                                 \
    do {                                                                                    \
        __m256i dm_ = bo3, t_ = _mm256_setzero_si256();                                     \
        _Pragma("GCC unroll 10") for (int r = 0; r < 10; r++) {                             \
            __asm__(PHX_ASM_HALF(A0, A1, A2, A3) PHX_ASM_HALF(B0, B1, B2, B3)               \
                    : [A0] "+x"(ae0), [A1] "+x"(ae1), [A2] "+x"(ae2), [A3] "+x"(ae3),        \
                      [B0] "+x"(ao0), [B1] "+x"(ao1), [B2] "+x"(ao2), [B3] "+x"(ao3), [t] "+x"(t_) \
                    : [ka] "m"(KA[r]), [kb] "m"(KB[r]), [m0] "m"(M0), [m1] "m"(M1));          \
            __asm__(PHX_ASM_HALF(C0, C1, C2, C3)                                            \
                    "vpxor %[ka], %[D1], %[D1]\n\t"                                         \
                    "vpmuludq %[m0], %[D0], %[D0]\n\t"                                      \
                    "vpmuludq %[m1], %[D2], %[D2]\n\t"                                      \
                    "vpsrlq $32, %[D2], %[t]\n\t"                                           \
                    "vpxor %[t], %[D1], %[D1]\n\t"                                          \
                    "vpsrlq $32, %[D0], %[t]\n\t"                                           \
                    "vpxor %[dm], %[t], %[t]\n\t"                                           \
                    "vpxor %[kb], %[t], %[t]\n\t"                                           \
                    "vmovdqu %[D0], %[dm]\n\t"                                              \
                    : [C0] "+x"(be0), [C1] "+x"(be1), [C2] "+x"(be2), [C3] "+x"(be3),        \
                      [D0] "+x"(bo0), [D1] "+x"(bo1), [D2] "+x"(bo2), [t] "+x"(t_), [dm] "+m"(dm_) \
                    : [ka] "m"(KA[r]), [kb] "m"(KB[r]), [m0] "m"(M0), [m1] "m"(M1));          \
            PHX_ROT4(ae0, ae1, ae2, ae3);                                                   \
            PHX_ROT4(ao0, ao1, ao2, ao3);                                                   \
            PHX_ROT4(be0, be1, be2, be3);                                                   \
            __m256i f_ = bo0; /* b.o: x1 -> x0, p1 -> x1, scratch -> x2, x0 freed */        \
            bo0 = bo1;                                                                      \
            bo1 = bo2;                                                                      \
            bo2 = t_;                                                                       \
            t_ = f_;                                                                        \
        }                                                                                   \
        bo3 = dm_;                                                                          \
    } while (0)
#else
#define PHX_ROUNDS2(KA, KB)                                                                 \
    do {                                                                                    \
        _Pragma("GCC unroll 10") for (int r = 0; r < 10; r++) {                             \
            PHX_HALF(ae0, ae1, ae2, ae3, r);                                                \
            PHX_HALF(ao0, ao1, ao2, ao3, r);                                                \
            PHX_HALF(be0, be1, be2, be3, r);                                                \
            PHX_HALF(bo0, bo1, bo2, bo3, r);                                                \
        }                                                                                   \
    } while (0)
#endif

/* Uniform and raw-bits outputs straight from the Philox registers, for whole groups (the
   raw-bits form is also where every other path gets its words, see gen_groups):
   element e takes word e (float32, bfloat16, uint32 outputs), so the 8 words of one lane
   register of a group are 8 consecutive elements. Per element the operations are those of
   process_seg_core's uniform loops (u = (w >> 8) * 2^-24, x = c0 + c1 u, clamp, round to
   bfloat16 once); what is gone is the round trip of words and values through L1 buffers
   and the copy to the output, which cost about a fifth of the time. */
typedef struct {
    __m256 c0, c1s, lo, hi;
    int clamp;
} uk_t;

static inline __attribute__((always_inline, target("avx2"))) void ust(int nt, char *dst, __m256i v) {
    if (nt)
        _mm256_stream_si256((__m256i *)dst, v);
    else
        _mm256_storeu_si256((__m256i *)dst, v);
}

/* c1 u = c1 ((w >> 8) 2^-24) is computed as (c1 2^-24) (w >> 8): the same real product,
   rounded once, since c1 2^-24 is exact (direct_ok checks that it is a normal float or 0) */
static inline __attribute__((always_inline, target("avx2"))) __m256i unif_bits8(const uk_t *U, __m256i w) {
    __m256 x = _mm256_add_ps(U->c0, _mm256_mul_ps(U->c1s, _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 8))));
    if (U->clamp) x = _mm256_min_ps(U->hi, _mm256_max_ps(U->lo, x)); /* x < lo ? lo : x, then x > hi ? hi : x */
    return _mm256_castps_si256(x);
}

static inline __attribute__((always_inline, target("avx2"))) __m256i bf16_bits8(__m256i u) {
    u = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)),
                         _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
    return _mm256_srli_epi32(u, 16);
}

/* the 4 lane registers of one group (elements 0-7, 8-15, 16-23, 24-31 of it) to dst */
static inline __attribute__((always_inline, target("avx2"))) void emit_group(const uk_t *U, int dtype, int nt,
                                                                             char *dst, __m256i l0, __m256i l1,
                                                                             __m256i l2, __m256i l3) {
    if (dtype == DT_U32) {
        ust(nt, dst, l0);
        ust(nt, dst + 32, l1);
        ust(nt, dst + 64, l2);
        ust(nt, dst + 96, l3);
    } else if (dtype == DT_F32) {
        ust(nt, dst, unif_bits8(U, l0));
        ust(nt, dst + 32, unif_bits8(U, l1));
        ust(nt, dst + 64, unif_bits8(U, l2));
        ust(nt, dst + 96, unif_bits8(U, l3));
    } else { /* bfloat16: values <= 0xFFFF after rounding, so the unsigned saturating pack is exact */
        __m256i a = _mm256_packus_epi32(bf16_bits8(unif_bits8(U, l0)), bf16_bits8(unif_bits8(U, l1)));
        __m256i b = _mm256_packus_epi32(bf16_bits8(unif_bits8(U, l2)), bf16_bits8(unif_bits8(U, l3)));
        ust(nt, dst, _mm256_permute4x64_epi64(a, 0xD8));
        ust(nt, dst + 32, _mm256_permute4x64_epi64(b, 0xD8));
    }
}

#define PHX_EMIT(S, dst)                                                                                  \
    emit_group(U, dtype, nt, dst, _mm256_blend_epi32(S##e0, _mm256_slli_epi64(S##o0, 32), 0xAA),                    \
               _mm256_blend_epi32(S##e1, _mm256_slli_epi64(S##o1, 32), 0xAA),                            \
               _mm256_blend_epi32(S##e2, _mm256_slli_epi64(S##o2, 32), 0xAA),                            \
               _mm256_blend_epi32(S##e3, _mm256_slli_epi64(S##o3, 32), 0xAA));

/* groups [g0, g0 + ng) of the uniform (or bits) output to out (element 32 g0 first) */
static inline __attribute__((always_inline)) PHX_ATTR void uniform_groups_body(const job_t *J, const uk_t *U,
                                                                               int dtype, int nt, uint64_t g0,
                                                                               int ng, char *out) {
    const __m256i M0 = _mm256_set1_epi32((int)PM0), M1 = _mm256_set1_epi32((int)PM1);
    __m256i KA[10], KB[10];
    uint32_t ka = J->k0, kb = J->k1;
    for (int r = 0; r < 10; r++) {
        KA[r] = _mm256_set1_epi32((int)ka);
        KB[r] = _mm256_set1_epi32((int)kb);
        ka += PW0;
        kb += PW1;
    }
    const __m256i xs2 = _mm256_set1_epi32((int)J->sub);
    const __m256i iotaE = _mm256_setr_epi32(0, 0, 2, 0, 4, 0, 6, 0);
    const __m256i iotaO = _mm256_setr_epi32(1, 0, 3, 0, 5, 0, 7, 0);
    const size_t gbytes = 32u * (size_t)(dtype == DT_BF16 ? 2 : 4);
    int g = 0;
    for (; g + 2 <= ng; g += 2) {
        uint64_t blk = (g0 + (uint64_t)g) * 8u;
        PHX_INIT(a, blk)
        PHX_INIT(b, blk + 8u)
        PHX_ROUNDS2(KA, KB);
        PHX_EMIT(a, out + (size_t)g * gbytes)
        PHX_EMIT(b, out + (size_t)(g + 1) * gbytes)
    }
    for (; g < ng; g++) {
        uint64_t blk = (g0 + (uint64_t)g) * 8u;
        PHX_INIT(a, blk)
#pragma GCC unroll 10
        for (int r = 0; r < 10; r++) {
            PHX_HALF(ae0, ae1, ae2, ae3, r);
            PHX_HALF(ao0, ao1, ao2, ao3, r);
        }
        PHX_EMIT(a, out + (size_t)g * gbytes)
    }
}

/* one specialization per output type and store kind, so that the branches in emit_group
   fold away */
#define UNIF_VARIANT(name, DT, NT)                                                                         \
    PHX_ATTR static void name(const job_t *J, const uk_t *U, uint64_t g0, int ng, char *out) {            \
        uniform_groups_body(J, U, DT, NT, g0, ng, out);                                                    \
    }
UNIF_VARIANT(unif_f32, DT_F32, 0)
UNIF_VARIANT(unif_f32_nt, DT_F32, 1)
UNIF_VARIANT(unif_bf16, DT_BF16, 0)
UNIF_VARIANT(unif_bf16_nt, DT_BF16, 1)
UNIF_VARIANT(unif_u32, DT_U32, 0)
UNIF_VARIANT(unif_u32_nt, DT_U32, 1)

/* whether fill_groups_direct handles this job */
static int direct_ok(const job_t *J) {
    if (J->dtype == DT_U32) return 1;
    if (J->kind != K_UNIFORM || (J->dtype != DT_F32 && J->dtype != DT_BF16)) return 0;
    float c1s = J->cf[1] * 0x1p-24f, a = c1s < 0.0f ? -c1s : c1s;
    return J->cf[1] == 0.0f || (a >= 0x1p-126f && a <= 0x1p127f); /* exact scaling (see unif_bits8) */
}

/* The clamp is a no-op when x = c0 + c1 u lies in [lo, hi] at both ends of u's range:
   x is a monotone function of u (each rounding is), so every value lies between those two. */
static int uniform_clamp_needed(const job_t *J) {
    if (!J->clamp) return 0;
    const float c0 = J->cf[0], c1 = J->cf[1];
    float x0 = c0 + c1 * 0.0f, x1 = c0 + c1 * ((float)(int32_t)0xFFFFFF * 0x1p-24f);
    float mn = x0 < x1 ? x0 : x1, mx = x0 < x1 ? x1 : x0;
    return !(mn >= J->lof && mx <= J->hif);
}

/* raw words of groups [g0, g0 + ng) into w: the uint32 output of the direct path, with
   plain stores (w is an L1 batch) */
__attribute__((target("avx2"))) static void philox_words_avx2(const job_t *J, uint64_t g0, int ng, uint32_t *w) {
    uk_t U;
    memset(&U, 0, sizeof U); /* the uint32 output reads none of the value constants */
    unif_u32(J, &U, g0, ng, (char *)w);
}

/* groups [g0, g0 + ng) of a direct_ok job into out */
__attribute__((target("avx2"))) static void fill_groups_direct(const job_t *J, uint64_t g0, int ng, char *out) {
    uk_t U;
    U.c0 = _mm256_set1_ps(J->cf[0]);
    U.c1s = _mm256_set1_ps(J->cf[1] * 0x1p-24f);
    U.lo = _mm256_set1_ps(J->lof);
    U.hi = _mm256_set1_ps(J->hif);
    U.clamp = uniform_clamp_needed(J);
    int nt = J->nt && ((uintptr_t)out & 31u) == 0;
    if (J->dtype == DT_U32)
        (nt ? unif_u32_nt : unif_u32)(J, &U, g0, ng, out);
    else if (J->dtype == DT_F32)
        (nt ? unif_f32_nt : unif_f32)(J, &U, g0, ng, out);
    else
        (nt ? unif_bf16_nt : unif_bf16)(J, &U, g0, ng, out);
}
#endif

/* the kernel path in use: P_PORTABLE (plain C, whatever gcc vectorizes for the baseline
   target), P_AVX2 (the hand-written AVX2 kernels, and the batch code compiled for AVX2) or
   P_AVX512 (AVX-512 F/BW/DQ/VL + BF16 kernels). All give the same bits. PyInit picks the
   best the CPU has; set_path forces one (tests run every path the machine has). */
enum { P_PORTABLE = 0, P_AVX2 = 1, P_AVX512 = 2 };
static int g_path = P_PORTABLE, g_max_path = P_PORTABLE;
#define g_have_avx2 (g_path >= P_AVX2)
#ifdef HAVE_AVX2_PATH
static void philox_words_avx512(const job_t *J, uint64_t g0, int ng, uint32_t *w);
static void fill_groups_direct512(const job_t *J, uint64_t g0, int ng, char *out);
static int seg32_avx512(const job_t *J, const uint32_t *restrict wp, int n, char *out);
#endif
/* outputs of at least this many bytes are written with non-temporal stores */
static double g_nt_min_bytes = 16.0 * 1024 * 1024;
/* the normal's tail test on the word (see ppnd_seg16): w & 0x7FFFFFFF < this */
static uint32_t g_normal_tail_words;

/* words of groups [g0, g0 + ng) into w (32 words per group) */
static inline void gen_groups(const job_t *J, uint64_t g0, int ng, uint32_t *restrict w) {
#ifdef HAVE_AVX2_PATH
    if (g_path == P_AVX512) {
        philox_words_avx512(J, g0, ng, w);
        return;
    }
    if (g_have_avx2) {
        philox_words_avx2(J, g0, ng, w);
        return;
    }
#endif
    philox_groups_scalar(J->k0, J->k1, g0, ng, J->sub, w);
}

/* ---------------------------------------------------------------- float32 math */
static inline __attribute__((always_inline)) float log32(float x) {
    uint32_t b = as_u(x);
    int32_t e = (int32_t)((b >> 23) & 0xFFu) - 127;
    float m = as_f((b & 0x7FFFFFu) | 0x3F800000u);
    int big = m > F(SQRT2_D);
    float mh = m * 0.5f;
    m = big ? mh : m;
    e = e + big;
    float s = (m - 1.0f) / (m + 1.0f);
    float z = s * s;
    float p = LOGC_F[5];
    p = p * z + LOGC_F[4];
    p = p * z + LOGC_F[3];
    p = p * z + LOGC_F[2];
    p = p * z + LOGC_F[1];
    p = p * z + LOGC_F[0];
    float ef = (float)e;
    return ef * F(LN2HI_F) + (ef * F(LN2LO_F) + s * p);
}

/* sqrt by a fixed recipe (torch.sqrt on CPU is not always correctly rounded, so the
   stream defines its own): inverse-sqrt bit estimate, 3 (float32) / 4 (float64)
   Newton steps y <- y * (1.5 - (x/2) * (y*y)), then x * y. Needs x >= smallest normal. */
static inline __attribute__((always_inline)) float sqrt32(float x) {
    float y = as_f(0x5F3759DFu - (as_u(x) >> 1));
    float h = 0.5f * x;
    y = y * (1.5f - h * (y * y));
    y = y * (1.5f - h * (y * y));
    y = y * (1.5f - h * (y * y));
    return x * y;
}

/* tail variable of AS 241: r = sqrt(-l), l = log(min(p, 1-p)) */
static inline __attribute__((always_inline)) float tailr32(float l) {
    float nl = -l;
    nl = nl > 0x1p-126f ? nl : 0x1p-126f;
    return sqrt32(nl);
}

/* central branch of PPND7 alone (|q| <= 0.425) */
static inline __attribute__((always_inline)) float central32(float q) {
    float r = F(0.180625) - q * q;
    float nc = q * (((F(A7_3) * r + F(A7_2)) * r + F(A7_1)) * r + F(A7_0));
    float dc = ((F(B7_3) * r + F(B7_2)) * r + F(B7_1)) * r + 1.0f;
    return nc / dc;
}

/* tail branch of PPND7 (|q| > 0.425) given rr = tailr32(log(min(p, 1 - p))) */
static inline __attribute__((always_inline)) float tail32(float q, float rr) {
    int big = rr > 5.0f;
    float s5 = rr - 5.0f, s16 = rr - F(1.6);
    float s = big ? s5 : s16;
    float c3 = big ? F(E7_3) : F(C7_3);
    float c2 = big ? F(E7_2) : F(C7_2);
    float c1 = big ? F(E7_1) : F(C7_1);
    float c0 = big ? F(E7_0) : F(C7_0);
    float d2 = big ? F(F7_2) : F(D7_2);
    float d1 = big ? F(F7_1) : F(D7_1);
    float nt = ((c3 * s + c2) * s + c1) * s + c0;
    float dt = (d2 * s + d1) * s + 1.0f;
    float ntn = -nt;
    nt = q < 0.0f ? ntn : nt;
    return nt / dt;
}

/* indices e < n with |q[e]| > 0.425, in increasing order; returns their count.
   idx needs room for n + 8 entries. */
static uint64_t g_lut[256];

static void init_lut(void) {
    for (int m = 0; m < 256; m++) {
        uint64_t v = 0;
        int k = 0;
        for (int b = 0; b < 8; b++)
            if (m & (1 << b)) v |= (uint64_t)b << (8 * k++);
        g_lut[m] = v;
    }
}

/* whether the normal's element with word bits m = w & 0x7FFFFFFF takes the tail branch:
   the portable path's q and test, scalar */
static int normal_word_is_tail(uint32_t m) {
    float t = ((float)(int32_t)(m >> 7) * 128.0f + ((float)(int32_t)(m & 127u) + 0.5f)) * 0x1p-32f;
    float q = t - 0.5f;
    float aq = q < 0.0f ? -q : q;
    return aq > F(0.425);
}

/* g_normal_tail_words: the least m that is not a tail word (the tail words are exactly
   [0, L): q is non-decreasing in m and never positive), by bisection */
static void init_normal_tail_words(void) {
    uint32_t lo = 0, hi = 0x80000000u; /* normal_word_is_tail(lo), !normal_word_is_tail(hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (normal_word_is_tail(mid))
            lo = mid;
        else
            hi = mid;
    }
    g_normal_tail_words = hi;
}

static int compact_tail_scalar(const float *restrict qs, int n, int *restrict idx) {
    int k = 0;
    for (int e = 0; e < n; e++) {
        float q = qs[e];
        float aq = q < 0.0f ? -q : q;
        idx[k] = e;
        k += aq > F(0.425);
    }
    return k;
}

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2,popcnt"))) static int compact_tail_avx2(const float *restrict qs, int n,
                                                                    int *restrict idx) {
    const __m256 lim = _mm256_set1_ps(F(0.425));
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    int k = 0, e0 = 0;
    for (; e0 + 8 <= n; e0 += 8) {
        __m256 aq = _mm256_and_ps(_mm256_loadu_ps(qs + e0), absmask);
        int m = _mm256_movemask_ps(_mm256_cmp_ps(aq, lim, _CMP_GT_OQ));
        __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&g_lut[m]));
        _mm256_storeu_si256((__m256i *)(idx + k), _mm256_add_epi32(_mm256_set1_epi32(e0), perm));
        k += __builtin_popcount((unsigned)m);
    }
    for (; e0 < n; e0++) {
        float q = qs[e0];
        float aq = q < 0.0f ? -q : q;
        idx[k] = e0;
        k += aq > F(0.425);
    }
    return k;
}
#endif

static inline int compact_tail(const float *restrict qs, int n, int *restrict idx) {
#ifdef HAVE_AVX2_PATH
    if (g_have_avx2) return compact_tail_avx2(qs, n, idx);
#endif
    return compact_tail_scalar(qs, n, idx);
}

/* z[e] = PPND7 for q[e] = p - 1/2 and t[e] = min(p, 1 - p), e < n. The central branch
   runs vectorized over all elements; the tail elements (|q| > 0.425, about 15% for a
   normal) are compacted, computed vectorized, and scattered back. Per element the
   operations are exactly those of section 4 of docs/keyed-stream.md: only the work on the
   unused branch is skipped. */
static inline __attribute__((always_inline)) void ppnd_batch32(int n, const float *restrict qs, const float *restrict ts, float *restrict zs) {
    /* odd paddings: arrays exactly 4 KiB apart make loads falsely wait on stores (4K aliasing) */
    int idx[SEG + 8 + 40];
    float tq[SEG + 24], tt[SEG + 56];
    for (int e = 0; e < n; e++) zs[e] = central32(qs[e]);
    int k = compact_tail(qs, n, idx);
    for (int j = 0; j < k; j++) {
        tq[j] = qs[idx[j]];
        tt[j] = ts[idx[j]];
    }
    for (int j = 0; j < k; j++) tt[j] = log32(tt[j]);
    for (int j = 0; j < k; j++) tt[j] = tailr32(tt[j]);
    for (int j = 0; j < k; j++) tt[j] = tail32(tq[j], tt[j]);
    for (int j = 0; j < k; j++) zs[idx[j]] = tt[j];
}

/* ---------------------------------------------------------------- float64 math */
static inline __attribute__((always_inline)) double log64(double x) {
    uint64_t b = as_u64(x);
    int64_t e = (int64_t)((b >> 52) & 0x7FFull) - 1023;
    double m = as_d((b & 0xFFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
    int64_t big = m > SQRT2_D;
    double mh = m * 0.5;
    m = big ? mh : m;
    e = e + big;
    double s = (m - 1.0) / (m + 1.0);
    double z = s * s;
    double p = LOGC_D[11];
    for (int k = 10; k >= 0; k--) p = p * z + LOGC_D[k];
    /* e is a small integer: exact conversion via the 2^52 trick (works for |e| < 2^51) */
    double ef = as_d(0x4330000000000000ull | (uint64_t)(e + 2048)) - (0x1p52 + 2048.0);
    return ef * LN2HI_D + (ef * LN2LO_D + s * p);
}

static inline __attribute__((always_inline)) double sqrt64(double x) {
    double y = as_d(0x5FE6EB50C7B537A9ull - (as_u64(x) >> 1));
    double h = 0.5 * x;
    y = y * (1.5 - h * (y * y));
    y = y * (1.5 - h * (y * y));
    y = y * (1.5 - h * (y * y));
    y = y * (1.5 - h * (y * y));
    return x * y;
}

static inline __attribute__((always_inline)) double central64(double q) {
    double r = 0.180625 - q * q;
    double nc = A16[7], dc = B16[7];
    for (int k = 6; k >= 0; k--) {
        nc = nc * r + A16[k];
        dc = dc * r + B16[k];
    }
    nc = q * nc;
    return nc / dc;
}

static inline __attribute__((always_inline)) double tailr64(double l) {
    double nl = -l;
    nl = nl > 0x1p-1022 ? nl : 0x1p-1022;
    return sqrt64(nl);
}

/* tail branch of PPND16 given rr = tailr64(log(min(p, 1 - p))) */
static inline __attribute__((always_inline)) double tail64(double q, double rr) {
    int64_t big = rr > 5.0;
    double s5 = rr - 5.0, s16 = rr - 1.6;
    double s = big ? s5 : s16;
    double nt = big ? E16[7] : C16[7], dt = big ? F16c[7] : D16[7];
    for (int k = 6; k >= 0; k--) {
        nt = nt * s + (big ? E16[k] : C16[k]);
        dt = dt * s + (big ? F16c[k] : D16[k]);
    }
    double ntn = -nt;
    nt = q < 0.0 ? ntn : nt;
    return nt / dt;
}

/* float64 analogue of ppnd_batch32: central branch for all, tail branch compacted */
static inline __attribute__((always_inline)) void ppnd_batch64(int n, const double *restrict qs, const double *restrict ts, double *restrict zs) {
    int idx[SEG + 40];
    double tq[SEG + 12], tt[SEG + 28];
    for (int e = 0; e < n; e++) zs[e] = central64(qs[e]);
    int k = 0;
    for (int e = 0; e < n; e++) {
        double q = qs[e];
        double aq = q < 0.0 ? -q : q;
        idx[k] = e;
        k += aq > 0.425;
    }
    for (int j = 0; j < k; j++) {
        tq[j] = qs[idx[j]];
        tt[j] = ts[idx[j]];
    }
    for (int j = 0; j < k; j++) tt[j] = tailr64(log64(tt[j]));
    for (int j = 0; j < k; j++) tt[j] = tail64(tq[j], tt[j]);
    for (int j = 0; j < k; j++) zs[idx[j]] = tt[j];
}

/* ---------------------------------------------------------------- stores */
static inline uint16_t f32_to_bf16(float x) {
    uint32_t u = as_u(x);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t x = as_u(f);
    uint32_t sign = x & 0x80000000u;
    x ^= sign;
    uint32_t mant_odd = (x >> 13) & 1u;
    uint32_t nrm = (x + 0xC8000FFFu + mant_odd) >> 13;
    uint32_t den = as_u(as_f(x) + 0.5f) - 0x3F000000u;
    uint32_t o = x < (113u << 23) ? den : nrm;
    o = x >= (143u << 23) ? (x > 0x7F800000u ? 0x7E00u : 0x7C00u) : o;
    return (uint16_t)(o | (sign >> 16));
}

/* ---------------------------------------------------------------- fused AVX2 float32 batch */
#ifdef HAVE_AVX2_PATH
/* Normal and truncated normal (central mode) batches, float32 and bfloat16 outputs, in
   one pass: word -> value -> rounded output stay in registers (the staged loops of
   ppnd_batch32 store and reload q, t and z through L1 arrays), and the inverse CDF's
   tail branch (about 15% of normals) runs only for the tail elements, which the pass
   packs (left-pack by a movemask lookup table) into a short list that a second pass
   finishes and scatters. Each element is a long dependency chain (about 60 cycles from
   word to value), so NV vectors of 8 are processed side by side (FOR_V) to give the
   out-of-order core independent work. Measured on an AVX2 Zen 3 core: about 5% faster
   than the staged loops for the normal, 3% for the truncated normal (the divisions and
   the Philox words bound both).

   Every function below is the 8-wide twin of the scalar function of the same name without
   the 8 (log32 -> log8, ...): the same IEEE operations in the same order on each lane, so
   the bits are those of the scalar path (and of reference.py; tests compare them).
   -ffp-contract=off keeps each mul/add separate, and no FMA target is enabled here. */
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")

#define NV 4 /* even: put8 packs pairs */
#define FOR_V for (int v = 0; v < NV; v++)
#define V1(x) _mm256_set1_ps((float)(x))
#define VI(x) _mm256_set1_epi32((int)(x))
#define ADD _mm256_add_ps
#define SUB _mm256_sub_ps
#define MUL _mm256_mul_ps

static inline __attribute__((always_inline)) void log8(__m256 *x) {
    __m256i e[NV];
    __m256 m[NV], big[NV], s[NV], z[NV], p[NV], ef[NV];
    FOR_V {
        __m256i b = _mm256_castps_si256(x[v]);
        /* x > 0 here (a probability), so the sign bit is 0 and b >> 23 is the biased exponent */
        e[v] = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), VI(127));
        m[v] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b, VI(0x7FFFFF)), VI(0x3F800000)));
    }
    FOR_V big[v] = _mm256_cmp_ps(m[v], V1(F(SQRT2_D)), _CMP_GT_OQ);
    FOR_V m[v] = _mm256_blendv_ps(m[v], MUL(m[v], V1(0.5f)), big[v]);
    FOR_V e[v] = _mm256_sub_epi32(e[v], _mm256_castps_si256(big[v])); /* mask -1 where big: e + 1 */
    FOR_V s[v] = _mm256_div_ps(SUB(m[v], V1(1.0f)), ADD(m[v], V1(1.0f)));
    FOR_V z[v] = MUL(s[v], s[v]);
    FOR_V p[v] = V1(LOGC_F[5]);
    for (int c = 4; c >= 0; c--) FOR_V p[v] = ADD(MUL(p[v], z[v]), V1(LOGC_F[c]));
    FOR_V ef[v] = _mm256_cvtepi32_ps(e[v]);
    FOR_V x[v] = ADD(MUL(ef[v], V1(F(LN2HI_F))), ADD(MUL(ef[v], V1(F(LN2LO_F))), MUL(s[v], p[v])));
}

/* tailr32 with sqrt32 inlined */
static inline __attribute__((always_inline)) void tailr8(__m256 *l) {
    __m256 nl[NV], y[NV], h[NV];
    FOR_V nl[v] = _mm256_max_ps(_mm256_xor_ps(l[v], V1(-0.0f)), V1(0x1p-126f)); /* vmaxps(a, b) = a > b ? a : b */
    FOR_V y[v] = _mm256_castsi256_ps(
        _mm256_sub_epi32(VI(0x5F3759DFu), _mm256_srli_epi32(_mm256_castps_si256(nl[v]), 1)));
    FOR_V h[v] = MUL(V1(0.5f), nl[v]);
    for (int it = 0; it < 3; it++) FOR_V y[v] = MUL(y[v], SUB(V1(1.5f), MUL(h[v], MUL(y[v], y[v]))));
    FOR_V l[v] = MUL(nl[v], y[v]);
}

static inline __attribute__((always_inline)) void central8(const __m256 *q, __m256 *z) {
    __m256 r[NV], nc[NV], dc[NV];
    FOR_V r[v] = SUB(V1(F(0.180625)), MUL(q[v], q[v]));
    FOR_V nc[v] = ADD(MUL(V1(F(A7_3)), r[v]), V1(F(A7_2)));
    FOR_V dc[v] = ADD(MUL(V1(F(B7_3)), r[v]), V1(F(B7_2)));
    FOR_V nc[v] = ADD(MUL(nc[v], r[v]), V1(F(A7_1)));
    FOR_V dc[v] = ADD(MUL(dc[v], r[v]), V1(F(B7_1)));
    FOR_V nc[v] = ADD(MUL(nc[v], r[v]), V1(F(A7_0)));
    FOR_V dc[v] = ADD(MUL(dc[v], r[v]), V1(1.0f));
    FOR_V nc[v] = MUL(q[v], nc[v]);
    FOR_V z[v] = _mm256_div_ps(nc[v], dc[v]);
}

static inline __attribute__((always_inline)) void tail8(const __m256 *q, __m256 *rr) {
    __m256 big[NV], s[NV], nt[NV], dt[NV];
    int any = 0;
    FOR_V big[v] = _mm256_cmp_ps(rr[v], V1(5.0f), _CMP_GT_OQ);
    FOR_V any |= _mm256_movemask_ps(big[v]);
    if (!any) { /* r <= 5 on every lane (all but about 1 in 10^11 tail elements): C / D only */
        FOR_V s[v] = SUB(rr[v], V1(F(1.6)));
        FOR_V nt[v] = ADD(MUL(V1(F(C7_3)), s[v]), V1(F(C7_2)));
        FOR_V dt[v] = ADD(MUL(V1(F(D7_2)), s[v]), V1(F(D7_1)));
        FOR_V nt[v] = ADD(MUL(nt[v], s[v]), V1(F(C7_1)));
        FOR_V dt[v] = ADD(MUL(dt[v], s[v]), V1(1.0f));
        FOR_V nt[v] = ADD(MUL(nt[v], s[v]), V1(F(C7_0)));
        FOR_V nt[v] = _mm256_blendv_ps(nt[v], _mm256_xor_ps(nt[v], V1(-0.0f)), _mm256_cmp_ps(q[v], _mm256_setzero_ps(), _CMP_LT_OQ));
        FOR_V rr[v] = _mm256_div_ps(nt[v], dt[v]);
        return;
    }
    FOR_V s[v] = _mm256_blendv_ps(SUB(rr[v], V1(F(1.6))), SUB(rr[v], V1(5.0f)), big[v]);
#define SEL(cc, ee) _mm256_blendv_ps(V1(F(cc)), V1(F(ee)), big[v])
    FOR_V nt[v] = ADD(MUL(SEL(C7_3, E7_3), s[v]), SEL(C7_2, E7_2));
    FOR_V dt[v] = ADD(MUL(SEL(D7_2, F7_2), s[v]), SEL(D7_1, F7_1));
    FOR_V nt[v] = ADD(MUL(nt[v], s[v]), SEL(C7_1, E7_1));
    FOR_V dt[v] = ADD(MUL(dt[v], s[v]), V1(1.0f));
    FOR_V nt[v] = ADD(MUL(nt[v], s[v]), SEL(C7_0, E7_0));
#undef SEL
    FOR_V nt[v] = _mm256_blendv_ps(nt[v], _mm256_xor_ps(nt[v], V1(-0.0f)), _mm256_cmp_ps(q[v], _mm256_setzero_ps(), _CMP_LT_OQ));
    FOR_V rr[v] = _mm256_div_ps(nt[v], dt[v]);
}

/* per-batch constants, broadcast */
typedef struct {
    __m256 c0, c1, c2, c3, lo, hi;
    int clamp, bf16, nt;
} vk_t;

/* x = c0 + c1 * z, then the clamp of section 6: vmaxps(lo, x) is x < lo ? lo : x and
   vminps(hi, x) is x > hi ? hi : x, NaN included */
static inline __attribute__((always_inline)) void affine8(const vk_t *K, __m256 *z) {
    FOR_V z[v] = ADD(K->c0, MUL(K->c1, z[v]));
    if (K->clamp) FOR_V z[v] = _mm256_min_ps(K->hi, _mm256_max_ps(K->lo, z[v]));
}

/* store NV * 8 float32 values, or their bfloat16 roundings (f32_to_bf16 on each lane) */
static inline __attribute__((always_inline)) void put8(const vk_t *K, char *out, int e, const __m256 *x) {
    if (!K->bf16) {
        FOR_V _mm256_storeu_ps((float *)out + e + 8 * v, x[v]);
        return;
    }
    /* two vectors per 256-bit pack (NV is even); rounded values are <= 0xFFFF, so the
       unsigned saturating pack is exact */
    for (int v = 0; v < NV; v += 2) {
        __m256i p = _mm256_packus_epi32(bf16_bits8(_mm256_castps_si256(x[v])), bf16_bits8(_mm256_castps_si256(x[v + 1])));
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + e + 8 * v), _mm256_permute4x64_epi64(p, 0xD8));
    }
}

/* (q, t) of an element from its word: normal (q = t - 1/2, t the lower-tail probability)
   or truncated normal central mode (q = c2 + u c3, t = max(1/2 - |q|, TINY)). */
static inline __attribute__((always_inline)) void qt8(const vk_t *K, int normal, const __m256i *w, __m256 *q, __m256 *t) {
    if (normal) {
        FOR_V {
            /* m = w & 0x7FFFFFFF; (m >> 7) * 128 as the exact conversion of m & ~127 (< 2^31,
               24 significant bits); both masks clear the sign bit, so m itself is not formed */
            __m256 hi = _mm256_cvtepi32_ps(_mm256_and_si256(w[v], VI(0x7FFFFF80)));
            __m256 lo = ADD(_mm256_cvtepi32_ps(_mm256_and_si256(w[v], VI(127))), V1(0.5f));
            t[v] = MUL(ADD(hi, lo), V1(0x1p-32f));
        }
        FOR_V q[v] = SUB(t[v], V1(0.5f));
    } else {
        FOR_V {
            __m256 u = MUL(ADD(_mm256_cvtepi32_ps(_mm256_srli_epi32(w[v], 9)), V1(0.5f)), V1(0x1p-23f));
            q[v] = ADD(K->c2, MUL(u, K->c3));
        }
        /* |q| by clearing the sign bit: differs from q < 0 ? -q : q only for q = -0, where
           0.5 - |q| is 0.5 either way */
        FOR_V t[v] = _mm256_max_ps(SUB(V1(0.5f), _mm256_and_ps(q[v], _mm256_castsi256_ps(VI(0x7FFFFFFF)))), V1(0x1p-126f));
    }
}

/* z -> output value; for the normal first its random sign (sgn ? -z : z is a flip of the
   sign bit) */
static inline __attribute__((always_inline)) void sign_affine8(const vk_t *K, int normal, const __m256i *w, __m256 *z) {
    if (normal) FOR_V z[v] = _mm256_xor_ps(z[v], _mm256_castsi256_ps(_mm256_and_si256(w[v], VI(0x80000000u))));
    affine8(K, z);
}

/* a full step of NV * 8 words from wp, or the last n < NV * 8 (zero padded) */
static inline __attribute__((always_inline)) void load_words(const uint32_t *wp, int n, __m256i *w) {
    if (n >= 8 * NV) {
        FOR_V w[v] = _mm256_loadu_si256((const __m256i *)wp + v);
        return;
    }
    _Alignas(32) uint32_t tmp[8 * NV] = {0};
    memcpy(tmp, wp, (size_t)n * 4);
    FOR_V w[v] = _mm256_load_si256((const __m256i *)tmp + v);
}

static inline __attribute__((always_inline)) void store_out(const vk_t *K, char *out, int e, int n, const __m256 *x) {
    if (n >= 8 * NV) {
        put8(K, out, e, x);
        return;
    }
    _Alignas(32) char tmp[8 * NV * 4];
    put8(K, tmp, 0, x);
    memcpy(out + (size_t)e * (K->bf16 ? 2 : 4), tmp, (size_t)n * (K->bf16 ? 2 : 4));
}

/* PPND7 over a batch (normal / truncated normal central mode), in stages: each stage is
   a loop of independent iterations with a short dependency chain, which the out-of-order
   core overlaps. Fusing the stages into one loop leaves each element a chain of about 60
   cycles (word -> q -> rational -> division -> output) that the scheduler window cannot
   hide; measured here, the staged form is 5-8% faster for float32, 13% for bfloat16.
   The tail branch (|q| > 0.425, about 15% of normals) runs only for the packed list of
   tail elements, which recompute q and t from their words (the same operations, so the
   same values). Per element the operations are exactly those of section 4 of
   docs/keyed-stream.md: only the work on the unused branch is skipped. */
static inline __attribute__((always_inline)) void ppnd_seg8(const vk_t *K, int normal, const uint32_t *restrict wp,
                                                             int n, char *out) {
    _Alignas(32) uint32_t tw[SEG + 8 * NV];
    _Alignas(32) int32_t idx[SEG + 8 * NV];
    _Alignas(32) float qb[SEG + 8 * NV], zb[SEG + 8 * NV + 8];
    const __m256 lim = V1(F(0.425)), absmask = _mm256_castsi256_ps(VI(0x7FFFFFFF));
    int k = 0;
    /* stage A: q of every element; the words and positions of the tail elements packed */
    for (int e0 = 0; e0 < n; e0 += 8 * NV) {
        __m256i w[NV];
        __m256 q[NV], t[NV];
        load_words(wp + e0, n - e0, w);
        qt8(K, normal, w, q, t);
        FOR_V _mm256_store_ps(qb + e0 + 8 * v, q[v]);
        FOR_V {
            unsigned m = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(q[v], absmask), lim, _CMP_GT_OQ));
            int valid = n - e0 - 8 * v; /* lanes past the end are padding */
            if (valid < 8) m &= valid > 0 ? (1u << valid) - 1u : 0u;
            __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&g_lut[m]));
            _mm256_storeu_si256((__m256i *)(tw + k), _mm256_permutevar8x32_epi32(w[v], perm));
            _mm256_storeu_si256((__m256i *)(idx + k), _mm256_add_epi32(VI(e0 + 8 * v), perm));
            k += __builtin_popcount(m);
        }
    }
    /* stage B: the central branch for every element */
    for (int e0 = 0; e0 < n; e0 += 8 * NV) {
        __m256 q[NV], x[NV];
        FOR_V q[v] = _mm256_load_ps(qb + e0 + 8 * v);
        central8(q, x);
        FOR_V _mm256_store_ps(zb + e0 + 8 * v, x[v]);
    }
    /* stages T1-T3 over the packed tail list, padded with zero words to whole steps
       (padding lanes compute finite values that are never used); T3's results overwrite
       the central values of their elements */
    _Alignas(32) float tq[SEG + 8 * NV], tt[SEG + 8 * NV + 24];
    int kp = (k + 8 * NV - 1) / (8 * NV) * (8 * NV);
    for (int j = k; j < kp; j++) tw[j] = 0u;
    for (int j0 = 0; j0 < kp; j0 += 8 * NV) {
        __m256i w[NV];
        __m256 q[NV], t[NV];
        FOR_V w[v] = _mm256_load_si256((const __m256i *)(tw + j0) + v);
        qt8(K, normal, w, q, t);
        FOR_V _mm256_store_ps(tq + j0 + 8 * v, q[v]);
        log8(t);
        FOR_V _mm256_store_ps(tt + j0 + 8 * v, t[v]);
    }
    for (int j0 = 0; j0 < kp; j0 += 8 * NV) {
        __m256 t[NV];
        FOR_V t[v] = _mm256_load_ps(tt + j0 + 8 * v);
        tailr8(t);
        FOR_V _mm256_store_ps(tt + j0 + 8 * v, t[v]);
    }
    for (int j0 = 0; j0 < kp; j0 += 8 * NV) {
        __m256 q[NV], t[NV];
        FOR_V {
            q[v] = _mm256_load_ps(tq + j0 + 8 * v);
            t[v] = _mm256_load_ps(tt + j0 + 8 * v);
        }
        tail8(q, t);
        FOR_V _mm256_store_ps(tt + j0 + 8 * v, t[v]);
    }
    for (int j = 0; j < k; j++) zb[idx[j]] = tt[j];
    /* stage C: sign, affine map, clamp, rounding, store (non-temporal for large outputs) */
    const int nt = K->nt && (((uintptr_t)out & 31u) == 0);
    for (int e0 = 0; e0 < n; e0 += 8 * NV) {
        __m256i w[NV];
        __m256 x[NV];
        load_words(wp + e0, n - e0, w);
        FOR_V x[v] = _mm256_load_ps(zb + e0 + 8 * v);
        sign_affine8(K, normal, w, x);
        if (nt && n - e0 >= 8 * NV) {
            if (!K->bf16)
                FOR_V _mm256_stream_ps((float *)out + e0 + 8 * v, x[v]);
            else
                for (int v = 0; v < NV; v += 2) {
                    __m256i p = _mm256_packus_epi32(bf16_bits8(_mm256_castps_si256(x[v])), bf16_bits8(_mm256_castps_si256(x[v + 1])));
                    _mm256_stream_si256((__m256i *)((uint16_t *)out + e0 + 8 * v), _mm256_permute4x64_epi64(p, 0xD8));
                }
        } else
            store_out(K, out, e0, n - e0, x);
    }
}

/* One batch of float32 or bfloat16 output from its words wp[0..n), for the two specs that
   take the inverse CDF per element (normal, truncated normal in central mode). Returns 0
   (nothing done) otherwise: uniform and the truncated normal's tail mode have no branch to
   split, and the plain loops of process_seg_core (vectorized by gcc) measured as fast. */
static int seg32_avx2(const job_t *J, const uint32_t *restrict wp, int n, char *out) {
    if (J->dtype != DT_F32 && J->dtype != DT_BF16) return 0;
    if (J->kind != K_NORMAL && !(J->kind == K_TRUNC && J->mode == 0)) return 0;
    vk_t K;
    K.c0 = _mm256_set1_ps(J->cf[0]);
    K.c1 = _mm256_set1_ps(J->cf[1]);
    K.c2 = _mm256_set1_ps(J->cf[2]);
    K.c3 = _mm256_set1_ps(J->cf[3]);
    K.lo = _mm256_set1_ps(J->lof);
    K.hi = _mm256_set1_ps(J->hif);
    K.clamp = J->clamp;
    K.bf16 = J->dtype == DT_BF16;
    K.nt = J->big;
    if (J->kind == K_NORMAL)
        ppnd_seg8(&K, 1, wp, n, out);
    else
        ppnd_seg8(&K, 0, wp, n, out);
    return 1;
}
#undef NV
#undef FOR_V
#undef V1
#undef VI
#undef ADD
#undef SUB
#undef MUL
#pragma GCC pop_options
#endif

/* ---------------------------------------------------------------- AVX-512 path */
#ifdef HAVE_AVX2_PATH
/* AVX-512 F/BW/DQ/VL + BF16 (chosen at run time, P_AVX512). The same IEEE operations in
   the same order as the scalar and AVX2 functions of the same name (the tests compare all
   paths bit for bit); what differs is the width (16 lanes), masks instead of blends,
   vpternlogd for Philox's three-way XORs, and vcvtne2ps2bf16 for the bfloat16 store. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,fma,popcnt")

/* Philox, one group (8 blocks) per state of 4 zmm registers: block b of the group in the
   low 32 bits of 64-bit lane b (vpmuludq reads low halves only, so the high halves may hold
   garbage). NG groups side by side give the core independent chains; with 32 zmm registers
   nothing spills (4 NG state + 2 multiplier registers; the round keys are memory operands). */
#define PHX5_NG 4
/* rounds r0..9 (r0 a constant: 0, or 2 after phx5_rounds_c's first two) */
static inline __attribute__((always_inline)) void phx5_rounds_from(int r0, int ng, const __m512i *KA,
                                                                    const __m512i *KB, __m512i x[][4]) {
    const __m512i M0 = _mm512_set1_epi64(PM0), M1 = _mm512_set1_epi64(PM1);
#pragma GCC unroll 10
    for (int r = r0; r < 10; r++) {
#pragma GCC unroll 4
        for (int i = 0; i < ng; i++) {
            __m512i p0 = _mm512_mul_epu32(x[i][0], M0), p1 = _mm512_mul_epu32(x[i][2], M1);
            /* 0x96: a ^ b ^ c */
            __m512i y0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), x[i][1], KA[r], 0x96);
            __m512i y2 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p0, 32), x[i][3], KB[r], 0x96);
            x[i][1] = p1;
            x[i][3] = p0;
            x[i][0] = y0;
            x[i][2] = y2;
        }
    }
}

static inline __attribute__((always_inline)) void phx5_rounds(int ng, const __m512i *KA, const __m512i *KB,
                                                               __m512i x[][4]) {
    phx5_rounds_from(0, ng, KA, KB, x);
}

static inline __attribute__((always_inline)) void phx5_init(const job_t *J, uint64_t g, __m512i x[4]) {
    uint64_t blk = g * 8u; /* a multiple of 8: the low word plus b < 8 never carries */
    x[0] = _mm512_add_epi64(_mm512_set1_epi64((uint32_t)blk), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    x[1] = _mm512_set1_epi64((uint32_t)(blk >> 32));
    x[2] = _mm512_set1_epi64(J->sub);
    x[3] = _mm512_setzero_si512();
}

static inline void phx5_keys(const job_t *J, __m512i *KA, __m512i *KB) {
    uint32_t ka = J->k0, kb = J->k1;
    for (int r = 0; r < 10; r++) {
        KA[r] = _mm512_set1_epi32((int)ka);
        KB[r] = _mm512_set1_epi32((int)kb);
        ka += PW0;
        kb += PW1;
    }
}

/* Rounds 1 and 2 of a batch of groups that share the counter's high word: x1 (that word),
   x2 (the sub-stream) and x3 (0) are the same in every lane, so round 1's x2 product and
   y0, and round 2's x0 product, are constants of the batch (phx5_consts); round 1 is then
   one product, shift and XOR, round 2 one product, shift and two XORs, instead of 2 + 2 + 2
   each. Bit for bit phx5_rounds' (only the low 32 bits of each 64-bit lane count). */
typedef struct {
    __m512i c1, c2, q0;
} phx5_c_t;

static inline __attribute__((always_inline)) void phx5_consts(const job_t *J, uint32_t hi, const __m512i *KA,
                                                               const __m512i *KB, phx5_c_t *C) {
    const __m512i M0 = _mm512_set1_epi64(PM0), M1 = _mm512_set1_epi64(PM1);
    __m512i p1 = _mm512_mul_epu32(_mm512_set1_epi64(J->sub), M1);
    __m512i y0 = _mm512_ternarylogic_epi32(_mm512_srli_epi64(p1, 32), _mm512_set1_epi64(hi), KA[0], 0x96);
    __m512i q0 = _mm512_mul_epu32(y0, M0);
    C->c1 = _mm512_xor_si512(p1, KA[1]);                       /* round 2: y0 = hi(p1) ^ x1 ^ KA */
    C->c2 = _mm512_xor_si512(_mm512_srli_epi64(q0, 32), KB[1]); /* round 2: y2 = hi(p0) ^ x3 ^ KB */
    C->q0 = q0;
}

/* phx5_rounds for groups whose x[i][0] holds the counters' low words (phx5_init's) */
static inline __attribute__((always_inline)) void phx5_rounds_c(int ng, const __m512i *KA, const __m512i *KB,
                                                                 const phx5_c_t *C, __m512i x[][4]) {
    const __m512i M0 = _mm512_set1_epi64(PM0), M1 = _mm512_set1_epi64(PM1);
#pragma GCC unroll 4
    for (int i = 0; i < ng; i++) {
        __m512i p0 = _mm512_mul_epu32(x[i][0], M0);
        __m512i y2 = _mm512_xor_si512(_mm512_srli_epi64(p0, 32), KB[0]);
        __m512i p1 = _mm512_mul_epu32(y2, M1);
        x[i][0] = _mm512_xor_si512(_mm512_srli_epi64(p1, 32), C->c1);
        x[i][1] = p1;
        x[i][2] = _mm512_xor_si512(p0, C->c2);
        x[i][3] = C->q0;
    }
    phx5_rounds_from(2, ng, KA, KB, x);
}

/* words 0-15 (lanes 0, 1) and 16-31 (lanes 2, 3) of a group: the low halves of two lane
   registers, concatenated */
static inline __attribute__((always_inline)) __m512i phx5_words(__m512i la, __m512i lb) {
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_epi32(la, ev, lb);
}

/* bfloat16 of 32 float32 values (a: elements 0-15, b: 16-31), f32_to_bf16 on each.
   vcvtne2ps2bf16 rounds to nearest even like f32_to_bf16 but reads subnormal inputs as
   zero (checked on this hardware: 0x007FFFFF gives 0x0000, f32_to_bf16 0x0080); a vector
   with a zero or subnormal lane (exponent field 0; rare: an exact 0, or a scale below
   2^-126) takes the integer rounding instead. NaN never occurs in the stream; infinities
   and values that round up to infinity agree. */
static inline __m512i bf16_soft16(__m512i u) {
    u = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    return _mm512_srli_epi32(u, 16);
}

static inline __attribute__((always_inline)) __m512i bf16x32(__m512 a, __m512 b, int exact) {
    if (exact) return (__m512i)_mm512_cvtne2ps_pbh(b, a); /* the job has no subnormal values */
    const __m512i E = _mm512_set1_epi32(0x7F800000);
    __mmask16 ok = _mm512_test_epi32_mask(_mm512_castps_si512(a), E) & _mm512_test_epi32_mask(_mm512_castps_si512(b), E);
    if (__builtin_expect(ok == 0xFFFF, 1)) return (__m512i)_mm512_cvtne2ps_pbh(b, a);
    __m256i lo = _mm512_cvtepi32_epi16(bf16_soft16(_mm512_castps_si512(a)));
    __m256i hi = _mm512_cvtepi32_epi16(bf16_soft16(_mm512_castps_si512(b)));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

typedef struct {
    __m512 c0, c1s, lo, hi;
    int clamp;
} uk5_t;

static inline __attribute__((always_inline)) __m512 unif16(const uk5_t *U, __m512i w) {
    __m512 x = _mm512_add_ps(U->c0, _mm512_mul_ps(U->c1s, _mm512_cvtepi32_ps(_mm512_srli_epi32(w, 8))));
    if (U->clamp) x = _mm512_min_ps(U->hi, _mm512_max_ps(U->lo, x)); /* as unif_bits8 */
    return x;
}

static inline __attribute__((always_inline)) void st5(int nt, char *dst, __m512i v) {
    if (nt)
        _mm512_stream_si512((__m512i *)dst, v);
    else
        _mm512_storeu_si512(dst, v);
}

/* one group's 32 outputs (uniform or raw bits) from its Philox registers to dst; per element
   the operations of emit_group */
static inline __attribute__((always_inline)) void emit_group512(const uk5_t *U, int dtype, int nt, int exact,
                                                                 const __m512i x[4], char *dst) {
    __m512i w0 = phx5_words(x[0], x[1]), w1 = phx5_words(x[2], x[3]);
    if (dtype == DT_U32) {
        st5(nt, dst, w0);
        st5(nt, dst + 64, w1);
    } else if (dtype == DT_F32) {
        st5(nt, dst, _mm512_castps_si512(unif16(U, w0)));
        st5(nt, dst + 64, _mm512_castps_si512(unif16(U, w1)));
    } else {
        st5(nt, dst, bf16x32(unif16(U, w0), unif16(U, w1), exact));
    }
}

/* groups [g0, g0 + ng) of the uniform (or raw bits) output straight from the Philox
   registers to out. A full batch emits with a constant trip count, so its state stays in
   registers (a variable count kept it on the stack: 16 spills and reloads per batch, about
   8% of the raw-bits time). */
static inline __attribute__((always_inline)) void uniform_groups512(const job_t *J, const uk5_t *U, int dtype,
                                                                     int nt, int exact, uint64_t g0, int ng,
                                                                     char *out) {
    __m512i KA[10], KB[10];
    phx5_keys(J, KA, KB);
    const size_t gbytes = 32u * (size_t)(dtype == DT_BF16 ? 2 : 4);
    int g = 0;
    phx5_c_t C;
    uint32_t chi = (uint32_t)((g0 * 8u) >> 32);
    phx5_consts(J, chi, KA, KB, &C);
    for (; g + PHX5_NG <= ng; g += PHX5_NG) {
        __m512i x[PHX5_NG][4];
        uint64_t b0 = (g0 + (uint64_t)g) * 8u, b1 = b0 + 8u * PHX5_NG - 1u;
        for (int i = 0; i < PHX5_NG; i++) phx5_init(J, g0 + (uint64_t)(g + i), x[i]);
        if ((uint32_t)(b0 >> 32) == chi && (uint32_t)(b1 >> 32) == chi) {
            phx5_rounds_c(PHX5_NG, KA, KB, &C, x);
        } else { /* the high counter word changes inside this batch (or did before it) */
            phx5_rounds(PHX5_NG, KA, KB, x);
            chi = (uint32_t)(b1 >> 32);
            phx5_consts(J, chi, KA, KB, &C);
        }
        for (int i = 0; i < PHX5_NG; i++) emit_group512(U, dtype, nt, exact, x[i], out + (size_t)(g + i) * gbytes);
    }
    for (; g < ng; g++) {
        __m512i x[1][4];
        phx5_init(J, g0 + (uint64_t)g, x[0]);
        phx5_rounds(1, KA, KB, x);
        emit_group512(U, dtype, nt, exact, x[0], out + (size_t)g * gbytes);
    }
}

#define UNIF5_VARIANT(name, DT, NT, EXACT)                                                 \
    static void name(const job_t *J, const uk5_t *U, uint64_t g0, int ng, char *out) {    \
        uniform_groups512(J, U, DT, NT, EXACT, g0, ng, out);                               \
    }
UNIF5_VARIANT(unif5_f32, DT_F32, 0, 0)
UNIF5_VARIANT(unif5_f32_nt, DT_F32, 1, 0)
UNIF5_VARIANT(unif5_bf16, DT_BF16, 0, 0)
UNIF5_VARIANT(unif5_bf16_nt, DT_BF16, 1, 0)
UNIF5_VARIANT(unif5_bf16x, DT_BF16, 0, 1)
UNIF5_VARIANT(unif5_bf16x_nt, DT_BF16, 1, 1)
UNIF5_VARIANT(unif5_u32, DT_U32, 0, 0)
UNIF5_VARIANT(unif5_u32_nt, DT_U32, 1, 0)

static void philox_words_avx512(const job_t *J, uint64_t g0, int ng, uint32_t *w) {
    uk5_t U;
    memset(&U, 0, sizeof U); /* the uint32 output reads none of the value constants */
    unif5_u32(J, &U, g0, ng, (char *)w);
}

static void fill_groups_direct512(const job_t *J, uint64_t g0, int ng, char *out) {
    uk5_t U;
    U.c0 = _mm512_set1_ps(J->cf[0]);
    U.c1s = _mm512_set1_ps(J->cf[1] * 0x1p-24f);
    U.lo = _mm512_set1_ps(J->lof);
    U.hi = _mm512_set1_ps(J->hif);
    U.clamp = uniform_clamp_needed(J);
    int nt = J->nt && ((uintptr_t)out & 63u) == 0; /* every group starts 64-byte aligned then */
    if (J->dtype == DT_U32)
        (nt ? unif5_u32_nt : unif5_u32)(J, &U, g0, ng, out);
    else if (J->dtype == DT_F32)
        (nt ? unif5_f32_nt : unif5_f32)(J, &U, g0, ng, out);
    else if (J->bf16_exact)
        (nt ? unif5_bf16x_nt : unif5_bf16x)(J, &U, g0, ng, out);
    else
        (nt ? unif5_bf16_nt : unif5_bf16)(J, &U, g0, ng, out);
}

/* ---- normal and truncated normal (central mode), float32 / bfloat16: ppnd_seg8 at 16 lanes */
#define NV5 4 /* vectors of 16 per step: 64 elements (5-8% faster than 32; bf16x32 packs pairs) */
#define STEP5 (16 * NV5)
#define FOR5 for (int v = 0; v < NV5; v++)
#define S1(x) _mm512_set1_ps((float)(x))
#define SI(x) _mm512_set1_epi32((int)(x))
#define ADD5 _mm512_add_ps
#define SUB5 _mm512_sub_ps
#define MUL5 _mm512_mul_ps

/* The transforms below take `fused` (a constant in each caller): 0 is the stream's recipe,
   every multiply and add rounded; 1 fuses each multiply with the add that follows (vfmadd,
   one rounding): not the stream's values, but within BF16_FAST_ULPS float32 ulps of them
   (fused_max_ulp() sweeps every input), for the bfloat16 shortcut of ppnd_seg16. */
static inline __attribute__((always_inline)) __m512 madd16(int fused, __m512 a, __m512 b, __m512 c) {
    return fused ? _mm512_fmadd_ps(a, b, c) : ADD5(MUL5(a, b), c);
}

/* -log32(x) for x > 0 normal (tailr32's nl before its max, which never binds here: the
   tail's t <= 1/2, so -log x >= 0.69). Bit for bit log32 then negation: the exponent
   (vgetexpps) and mantissa (vgetmantps, [1, 2)) are exact and the float of e + big is an
   exact sum, and every constant is negated instead of the result (round to nearest is
   symmetric: each product and sum is the exact negation of log32's). */
static inline __attribute__((always_inline)) void neglog16(__m512 *x, int fused) {
    __m512 m[NV5], s[NV5], z[NV5], p[NV5], ef[NV5];
    __mmask16 big[NV5];
    FOR5 ef[v] = _mm512_getexp_ps(x[v]);
    FOR5 m[v] = _mm512_getmant_ps(x[v], _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
    FOR5 big[v] = _mm512_cmp_ps_mask(m[v], S1(F(SQRT2_D)), _CMP_GT_OQ);
    FOR5 m[v] = _mm512_mask_mul_ps(m[v], big[v], m[v], S1(0.5f));
    FOR5 ef[v] = _mm512_mask_add_ps(ef[v], big[v], ef[v], S1(1.0f));
    FOR5 s[v] = _mm512_div_ps(SUB5(m[v], S1(1.0f)), ADD5(m[v], S1(1.0f)));
    FOR5 z[v] = MUL5(s[v], s[v]);
    FOR5 p[v] = S1(-LOGC_F[5]);
    for (int c = 4; c >= 0; c--) FOR5 p[v] = madd16(fused, p[v], z[v], S1(-LOGC_F[c]));
    FOR5 x[v] = madd16(fused, ef[v], S1(-F(LN2HI_F)), madd16(fused, ef[v], S1(-F(LN2LO_F)), MUL5(s[v], p[v])));
}

/* tailr32 given nl = -l (neglog16's) */
static inline __attribute__((always_inline)) void tailr16(__m512 *nl, int fused) {
    __m512 y[NV5], h[NV5];
    FOR5 y[v] = _mm512_castsi512_ps(_mm512_sub_epi32(SI(0x5F3759DFu), _mm512_srli_epi32(_mm512_castps_si512(nl[v]), 1)));
    FOR5 h[v] = MUL5(S1(0.5f), nl[v]);
    for (int it = 0; it < 3; it++)
        FOR5 y[v] = MUL5(y[v], fused ? _mm512_fnmadd_ps(h[v], MUL5(y[v], y[v]), S1(1.5f))
                                     : SUB5(S1(1.5f), MUL5(h[v], MUL5(y[v], y[v]))));
    FOR5 nl[v] = MUL5(nl[v], y[v]);
}

/* central32 up to its division: numerator nc and denominator dc */
static inline __attribute__((always_inline)) void central16_nd(const __m512 *q, __m512 *nc, __m512 *dc, int fused) {
    __m512 r[NV5];
    FOR5 r[v] = fused ? _mm512_fnmadd_ps(q[v], q[v], S1(F(0.180625))) : SUB5(S1(F(0.180625)), MUL5(q[v], q[v]));
    FOR5 nc[v] = madd16(fused, S1(F(A7_3)), r[v], S1(F(A7_2)));
    FOR5 dc[v] = madd16(fused, S1(F(B7_3)), r[v], S1(F(B7_2)));
    FOR5 nc[v] = madd16(fused, nc[v], r[v], S1(F(A7_1)));
    FOR5 dc[v] = madd16(fused, dc[v], r[v], S1(F(B7_1)));
    FOR5 nc[v] = madd16(fused, nc[v], r[v], S1(F(A7_0)));
    FOR5 dc[v] = madd16(fused, dc[v], r[v], S1(1.0f));
    FOR5 nc[v] = MUL5(q[v], nc[v]);
}

/* central32 */
static inline __attribute__((always_inline)) void central16(const __m512 *q, __m512 *z, int fused) {
    __m512 nc[NV5], dc[NV5];
    central16_nd(q, nc, dc, fused);
    FOR5 z[v] = _mm512_div_ps(nc[v], dc[v]);
}

/* The bfloat16 shortcut. A bfloat16 value is the float32 value x rounded once to nearest
   even: the same for every float32 of the same sign strictly between two consecutive ties
   (bit patterns with low half 0x8000; the rounding is monotone in the pattern). With mean 0
   (c0 = 0), x = RN(c1 z) where z is the transform's value; the fused transform's z' is
   within BF16_FAST_ULPS ulps of z (relative BF16_FAST_ULPS 2^-23), so c1 z' is within
   2 BF16_FAST_ULPS ulps of c1 z in the binade of the larger (also across a binade boundary:
   the larger is then near it) and RN(c1 z') within 2 BF16_FAST_ULPS + 1 patterns of x; the
   sign and the clamp to [lo, hi] never increase the distance. Where a lane's pattern is
   more than BF16_FAST_MARGIN from its nearest tie both round to the same bfloat16; the
   others (about 0.06% of the values) are recomputed one at a time with the scalar recipe. */
#define BF16_FAST_ULPS 9
#define BF16_FAST_MARGIN (2 * BF16_FAST_ULPS + 2)

/* bit i set: element i of x[0..3] (64 values) is within BF16_FAST_MARGIN of a bfloat16 tie
   (its pattern's low half near 0x8000). The low halves of 32 values gathered in one
   register (vpermt2w), where 16-bit adds wrap by themselves */
static inline __attribute__((always_inline)) uint64_t near_ties16(const __m512 *x) {
    const __m512i lows = _mm512_setr_epi64(0x0006000400020000ll, 0x000E000C000A0008ll, 0x0016001400120010ll,
                                           0x001E001C001A0018ll, 0x0026002400220020ll, 0x002E002C002A0028ll,
                                           0x0036003400320030ll, 0x003E003C003A0038ll);
    __mmask32 nr[NV5 / 2];
    for (int v = 0; v < NV5; v += 2) {
        __m512i lo = _mm512_permutex2var_epi16(_mm512_castps_si512(x[v]), lows, _mm512_castps_si512(x[v + 1]));
        nr[v / 2] = _mm512_cmple_epu16_mask(_mm512_add_epi16(lo, _mm512_set1_epi16((short)(BF16_FAST_MARGIN - 0x8000))),
                                            _mm512_set1_epi16(2 * BF16_FAST_MARGIN));
    }
    return _cvtmask64_u64(_mm512_kunpackd((__mmask64)nr[1], (__mmask64)nr[0]));
}

/* note step e0's values near a tie (near_ties16) in the list of steps to redo, without a branch */
static inline __attribute__((always_inline)) void note_near16(const __m512 *x, int e0, uint64_t *redo_m,
                                                               int *redo_e, int *nredo) {
    const uint64_t near = near_ties16(x);
    redo_m[*nredo] = near;
    redo_e[*nredo] = e0;
    *nredo += near != 0;
}

/* tail branch (tail32). The normal's copy has neither selection: rr > 5 never holds for
   its words (t >= 2^-33: rr <= 4.783, checked over every tail word), and q < 0 always
   (q = t - 1/2, t < 0.075), so it takes C, D and the negated numerator directly (negated
   constants: the exact negation of each product and sum, as in neglog16). */
static inline __attribute__((always_inline)) void tail16(const int normal, const __m512 *q, __m512 *rr, int fused) {
    __m512 s[NV5], nt[NV5], dt[NV5];
    __mmask16 big[NV5], neg[NV5];
    FOR5 big[v] = normal ? 0 : _mm512_cmp_ps_mask(rr[v], S1(5.0f), _CMP_GT_OQ);
    FOR5 s[v] = normal ? SUB5(rr[v], S1(F(1.6))) : _mm512_mask_sub_ps(SUB5(rr[v], S1(F(1.6))), big[v], rr[v], S1(5.0f));
#define SEL5(cc, ee) (normal ? S1(F(cc)) : _mm512_mask_blend_ps(big[v], S1(F(cc)), S1(F(ee))))
#define NSEL5(cc, ee) (normal ? S1(-F(cc)) : _mm512_mask_blend_ps(big[v], S1(F(cc)), S1(F(ee))))
    FOR5 nt[v] = madd16(fused, NSEL5(C7_3, E7_3), s[v], NSEL5(C7_2, E7_2));
    FOR5 dt[v] = madd16(fused, SEL5(D7_2, F7_2), s[v], SEL5(D7_1, F7_1));
    FOR5 nt[v] = madd16(fused, nt[v], s[v], NSEL5(C7_1, E7_1));
    FOR5 dt[v] = madd16(fused, dt[v], s[v], S1(1.0f));
    FOR5 nt[v] = madd16(fused, nt[v], s[v], NSEL5(C7_0, E7_0));
#undef SEL5
#undef NSEL5
    if (!normal) {
        FOR5 neg[v] = _mm512_cmp_ps_mask(q[v], _mm512_setzero_ps(), _CMP_LT_OQ);
        FOR5 nt[v] = _mm512_mask_xor_ps(nt[v], neg[v], nt[v], S1(-0.0f));
    }
    FOR5 rr[v] = _mm512_div_ps(nt[v], dt[v]);
}

typedef struct {
    __m512 c0, c1, c2, c3, lo, hi;
} vk5_t;

/* the normal's (q, t) from words: t = RN(m + 1/2) 2^-32 with m = w & 0x7FFFFFFF (qt8's
   hi + lo, one rounding) is RN(2m + 1) 2^-33, one unsigned conversion of u = (w << 1) | 1
   (returned in u: m < L is u < 2L, the tail test without another operation). w << 1 as
   w + w: vpaddd issues on ports 0 and 5, vpslld on port 0 only (measured here: float32
   2% faster; port 0 also takes the shifts of sqrt and Philox) */
static inline __attribute__((always_inline)) void qt16_normal(const __m512i *w, __m512 *q, __m512 *t, __m512i *u) {
    FOR5 u[v] = _mm512_or_si512(_mm512_add_epi32(w[v], w[v]), SI(1));
    FOR5 t[v] = MUL5(_mm512_cvtepu32_ps(u[v]), S1(0x1p-33f));
    FOR5 q[v] = SUB5(t[v], S1(0.5f));
}

/* the truncated normal's (central mode) q = c2 + u c3 from a word, and t = max(1/2 - |q|, TINY) */
static inline __attribute__((always_inline)) __m512 q16_trunc(const vk5_t *K, __m512i w) {
    __m512 u = MUL5(ADD5(_mm512_cvtepi32_ps(_mm512_srli_epi32(w, 9)), S1(0.5f)), S1(0x1p-23f));
    return ADD5(K->c2, MUL5(u, K->c3));
}

static inline __attribute__((always_inline)) __m512 t16_trunc(__m512 q) {
    return _mm512_max_ps(SUB5(S1(0.5f), _mm512_abs_ps(q)), S1(0x1p-126f));
}

static inline __attribute__((always_inline)) __mmask16 valid16(int k) {
    return k >= 16 ? (__mmask16)0xFFFF : k > 0 ? (__mmask16)((1u << k) - 1u) : 0;
}

/* sign (normal: z ^ (w & sign bit), one vpternlogd), affine map, clamp */
static inline __attribute__((always_inline)) __m512 sign_affine16(const vk5_t *K, int normal, int clamp, __m512i w,
                                                                   __m512 z) {
    if (normal) z = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(z), w, SI(0x80000000u), 0x78));
    z = ADD5(K->c0, MUL5(K->c1, z));
    if (clamp) z = _mm512_min_ps(K->hi, _mm512_max_ps(K->lo, z));
    return z;
}

/* 32 outputs at element e, of which n valid (n < 32 only in the last step) */
static inline __attribute__((always_inline)) void put16(int bf16, int nt, char *out, int e, int n, __m512 x0,
                                                         __m512 x1) {
    if (n <= 0) return; /* the last step's pairs past the end */
    if (bf16) {
        __m512i b = bf16x32(x0, x1, bf16 >= 2);
        uint16_t *o = (uint16_t *)out + e;
        if (n >= 32)
            st5(nt, (char *)o, b);
        else
            _mm512_mask_storeu_epi16(o, (__mmask32)((1ull << n) - 1u), b);
        return;
    }
    float *o = (float *)out + e;
    if (n >= 32) {
        st5(nt, (char *)o, _mm512_castps_si512(x0));
        st5(nt, (char *)(o + 16), _mm512_castps_si512(x1));
    } else {
        _mm512_mask_storeu_ps(o, valid16(n), x0);
        _mm512_mask_storeu_ps(o + 16, valid16(n - 16), x1);
    }
}

/* The stream's bfloat16 value of one element (the shortcut's fallback, see BF16_FAST_MARGIN):
   the scalar recipe, the same operations as the vector one. normal: from its word w;
   truncated normal: from its q. */
static __attribute__((noinline)) void exact_lane16(const vk5_t *K, int normal, int clamp, uint32_t w, float q,
                                                   uint16_t *o) {
    float t;
    int tail;
    if (normal) {
        t = (float)((w << 1) | 1u) * 0x1p-33f; /* qt16_normal's */
        q = t - 0.5f;
        tail = (w & 0x7FFFFFFFu) < g_normal_tail_words;
    } else {
        float aq = q < 0.0f ? -q : q;
        t = 0.5f - aq;
        t = t > 0x1p-126f ? t : 0x1p-126f; /* t16_trunc's */
        tail = aq > F(0.425);
    }
    float z = tail ? tail32(q, tailr32(log32(t))) : central32(q);
    if (normal && (w & 0x80000000u)) z = -z;
    float x = _mm512_cvtss_f32(K->c0) + _mm512_cvtss_f32(K->c1) * z;
    if (clamp) { /* _mm512_min_ps(hi, _mm512_max_ps(lo, x)) */
        float lo = _mm512_cvtss_f32(K->lo), hi = _mm512_cvtss_f32(K->hi);
        x = lo > x ? lo : x;
        x = hi < x ? hi : x;
    }
    *o = f32_to_bf16(x);
}

/* ppnd_seg8's stages at 16 lanes, in three passes over a batch of n words:
   1. the tail elements (|q| > 0.425, about 15%) packed with vpcompressd into a register
      and a full store (the memory form is microcoded on Zen 4): their words for the
      normal, their q for the truncated normal (whose q is also kept for pass 3). The
      normal's test is on the integer word: q = t - 1/2 is a non-decreasing function of
      m = w & 0x7FFFFFFF (each step rounds monotonically) and never positive, so
      |q| > 0.425 is exactly m < g_normal_tail_words, found at load time from the recipe;
   2. the tail branch (log, sqrt, rational) over the packed list;
   3. for every element the central branch, the tail values expanded into their lanes
      (vexpandps; the normal's test here is u < 2L on qt16_normal's u = 2m + 1), sign,
      affine map, clamp, store.
   bf16 is 0 (float32 output), 1 (bfloat16), 2 (bfloat16, the job has no subnormal values: no
   check before the hardware rounding) or 3 (as 2, and mean 0: the transform fused, see
   BF16_FAST_MARGIN). normal, bf16, nt and clamp are constants
   in each caller: one specialized copy each, so the loops carry no branches but the last,
   partial step's. */
static inline __attribute__((always_inline)) void ppnd_seg16(const vk5_t *K, const int normal, const int bf16,
                                                              const int nt, const int clamp,
                                                              const uint32_t *restrict wp, int n, char *out) {
    _Alignas(64) uint32_t tp[SEG + 128]; /* packed tail words (normal) or q (truncated) */
    _Alignas(64) float qb[SEG + 64];     /* truncated normal: q of every element */
    _Alignas(64) float tt[SEG + 128];    /* tail values, packed */
    const __m512i L = SI(g_normal_tail_words), L2 = SI(2u * g_normal_tail_words); /* L < 2^31 */
    /* bf16 == 3: the steps with values near a bfloat16 tie, and these values; noted without a
       branch, recomputed after pass 3 (a mispredicted branch there, on values that come out
       of the divisions late, discards the work of the steps after it) */
    int redo_e[SEG / STEP5 + 1], nredo = 0;
    uint64_t redo_m[SEG / STEP5 + 1];
    int k = 0;
    for (int e0 = 0; e0 < n; e0 += STEP5) {
        const int r = n - e0;
        __m512i w[NV5];
        FOR5 w[v] = r >= STEP5 ? _mm512_loadu_si512(wp + e0 + 16 * v) : _mm512_maskz_loadu_epi32(valid16(r - 16 * v), wp + e0 + 16 * v);
        FOR5 {
            __mmask16 vm = r >= STEP5 ? (__mmask16)0xFFFF : valid16(r - 16 * v);
            __m512i packed;
            __mmask16 m;
            if (normal) {
                m = _mm512_mask_cmplt_epu32_mask(vm, _mm512_and_si512(w[v], SI(0x7FFFFFFF)), L);
                packed = _mm512_maskz_compress_epi32(m, w[v]);
            } else {
                __m512 q = q16_trunc(K, w[v]);
                _mm512_store_ps(qb + e0 + 16 * v, q);
                m = _mm512_mask_cmp_ps_mask(vm, _mm512_abs_ps(q), S1(F(0.425)), _CMP_GT_OQ);
                packed = _mm512_maskz_compress_epi32(m, _mm512_castps_si512(q));
            }
            _mm512_storeu_si512(tp + k, packed);
            k += __builtin_popcount((unsigned)m);
        }
    }
    for (int j = k; j < k + STEP5; j++) tp[j] = 0u; /* the last step's lanes past k: values unused */
    /* pass 2, software-pipelined as pass 3 below: each step's -log (stage A) is issued with
       the previous step's sqrt and rational (stage B) */
    if (k > 0) {
        __m512 pl[NV5], pq[NV5];
#define P2_A(J0)                                                                                             \
        do {                                                                                                 \
            if (normal) {                                                                                    \
                __m512i w_[NV5], u_[NV5];                                                                    \
                FOR5 w_[v] = _mm512_load_si512(tp + (J0) + 16 * v);                                          \
                qt16_normal(w_, pq, pl, u_);                                                                 \
            } else {                                                                                         \
                FOR5 pq[v] = _mm512_load_ps((const float *)tp + (J0) + 16 * v);                              \
                FOR5 pl[v] = t16_trunc(pq[v]);                                                               \
            }                                                                                                \
            neglog16(pl, bf16 == 3);                                                                         \
        } while (0)
        P2_A(0);
        for (int j0 = STEP5;; j0 += STEP5) {
            __m512 q[NV5], t[NV5];
            FOR5 t[v] = pl[v];
            FOR5 q[v] = pq[v];
            const int more = j0 < k;
            if (more) P2_A(j0);
            tailr16(t, bf16 == 3);
            tail16(normal, q, t, bf16 == 3);
            FOR5 _mm512_store_ps(tt + j0 - STEP5 + 16 * v, t[v]);
            if (!more) break;
        }
#undef P2_A
    }
    /* pass 3 over the full steps, software-pipelined in two stages (each step's central
       branch up to its division, then the previous step's division, expand, sign, affine
       and store): the two are independent, which keeps the scheduler's window from filling
       with one step's long dependency chains */
    int j = 0, e0 = 0;
    if (n >= STEP5) {
        __m512i pw[NV5];
        __m512 pn[NV5], pd[NV5];
        __mmask16 pm[NV5];
#define P3_A(E)                                                                                              \
        do {                                                                                                 \
            __m512 q_[NV5];                                                                                  \
            FOR5 pw[v] = _mm512_loadu_si512(wp + (E) + 16 * v);                                             \
            if (normal) {                                                                                    \
                __m512i u_[NV5];                                                                             \
                __m512 t_[NV5];                                                                              \
                qt16_normal(pw, q_, t_, u_);                                                                 \
                FOR5 pm[v] = _mm512_cmplt_epu32_mask(u_[v], L2);                                            \
            } else {                                                                                         \
                FOR5 q_[v] = _mm512_load_ps(qb + (E) + 16 * v);                                              \
                FOR5 pm[v] = _mm512_cmp_ps_mask(_mm512_abs_ps(q_[v]), S1(F(0.425)), _CMP_GT_OQ);             \
            }                                                                                                \
            central16_nd(q_, pn, pd, bf16 == 3);                                                             \
        } while (0)
        P3_A(0);
        for (e0 = STEP5;; e0 += STEP5) {
            __m512i w[NV5];
            __m512 x[NV5];
            __mmask16 m[NV5];
            FOR5 x[v] = _mm512_div_ps(pn[v], pd[v]);
            FOR5 w[v] = pw[v];
            FOR5 m[v] = pm[v];
            const int more = n - e0 >= STEP5;
            if (more) P3_A(e0);
            FOR5 {
                x[v] = _mm512_mask_expand_ps(x[v], m[v], _mm512_loadu_ps(tt + j));
                j += __builtin_popcount((unsigned)m[v]);
            }
            FOR5 x[v] = sign_affine16(K, normal, clamp, w[v], x[v]);
            if (bf16 == 3) note_near16(x, e0 - STEP5, redo_m, redo_e, &nredo);
            for (int v = 0; v < NV5; v += 2) put16(bf16, nt, out, e0 - STEP5 + 16 * v, STEP5, x[v], x[v + 1]);
            if (!more) break;
        }
#undef P3_A
    }
    /* the last, partial step */
    for (; e0 < n; e0 += STEP5) {
        const int r = n - e0;
        __m512i w[NV5], u[NV5];
        __m512 q[NV5], t[NV5], x[NV5];
        FOR5 w[v] = _mm512_maskz_loadu_epi32(valid16(r - 16 * v), wp + e0 + 16 * v);
        if (normal)
            qt16_normal(w, q, t, u);
        else
            FOR5 q[v] = _mm512_load_ps(qb + e0 + 16 * v);
        central16(q, x, bf16 == 3);
        FOR5 {
            __mmask16 vm = valid16(r - 16 * v);
            __mmask16 m = normal ? _mm512_mask_cmplt_epu32_mask(vm, u[v], L2)
                                 : _mm512_mask_cmp_ps_mask(vm, _mm512_abs_ps(q[v]), S1(F(0.425)), _CMP_GT_OQ);
            x[v] = _mm512_mask_expand_ps(x[v], m, _mm512_loadu_ps(tt + j));
            j += __builtin_popcount((unsigned)m);
        }
        FOR5 x[v] = sign_affine16(K, normal, clamp, w[v], x[v]);
        if (bf16 == 3) note_near16(x, e0, redo_m, redo_e, &nredo); /* lanes past the end: at worst redone */
        for (int v = 0; v < NV5; v += 2) put16(bf16, nt, out, e0 + 16 * v, r - 16 * v, x[v], x[v + 1]);
    }
    if (bf16 == 3 && nredo) {
        for (int i = 0; i < nredo; i++)
            for (uint64_t bits = redo_m[i]; bits; bits &= bits - 1) {
                int e = redo_e[i] + __builtin_ctzll(bits);
                if (e < n) exact_lane16(K, normal, clamp, wp[e], normal ? 0.0f : qb[e], (uint16_t *)out + e);
            }
    }
}

#define PPND16_VARIANT(name, NORMAL, BF16, NT, CLAMP)                                        \
    static void name(const vk5_t *K, const uint32_t *wp, int n, char *out) {                \
        ppnd_seg16(K, NORMAL, BF16, NT, CLAMP, wp, n, out);                                  \
    }
#define PPND16_VARIANTS(pre, NORMAL)                                                          \
    PPND16_VARIANT(pre##_f32, NORMAL, 0, 0, 0)                                                \
    PPND16_VARIANT(pre##_f32_nt, NORMAL, 0, 1, 0)                                             \
    PPND16_VARIANT(pre##_f32_c, NORMAL, 0, 0, 1)                                              \
    PPND16_VARIANT(pre##_f32_nt_c, NORMAL, 0, 1, 1)                                           \
    PPND16_VARIANT(pre##_bf16, NORMAL, 1, 0, 0)                                               \
    PPND16_VARIANT(pre##_bf16_nt, NORMAL, 1, 1, 0)                                            \
    PPND16_VARIANT(pre##_bf16_c, NORMAL, 1, 0, 1)                                             \
    PPND16_VARIANT(pre##_bf16_nt_c, NORMAL, 1, 1, 1)                                          \
    PPND16_VARIANT(pre##_bf16x, NORMAL, 2, 0, 0)                                              \
    PPND16_VARIANT(pre##_bf16x_nt, NORMAL, 2, 1, 0)                                           \
    PPND16_VARIANT(pre##_bf16x_c, NORMAL, 2, 0, 1)                                            \
    PPND16_VARIANT(pre##_bf16x_nt_c, NORMAL, 2, 1, 1)                                         \
    PPND16_VARIANT(pre##_bf16f, NORMAL, 3, 0, 0)                                              \
    PPND16_VARIANT(pre##_bf16f_c, NORMAL, 3, 0, 1)                                            \
    static void (*const pre##_table[16])(const vk5_t *, const uint32_t *, int, char *) = {   \
        pre##_f32, pre##_f32_c, pre##_f32_nt, pre##_f32_nt_c,                                \
        pre##_bf16, pre##_bf16_c, pre##_bf16_nt, pre##_bf16_nt_c,                            \
        pre##_bf16x, pre##_bf16x_c, pre##_bf16x_nt, pre##_bf16x_nt_c,                        \
        pre##_bf16f, pre##_bf16f_c, pre##_bf16f, pre##_bf16f_c}; /* no non-temporal stores: below */
PPND16_VARIANTS(ppnd16n, 1)
PPND16_VARIANTS(ppnd16t, 0)

/* the largest distance, in float32 ulps (bit patterns), between the stream's transform and
   the fused one over every input the AVX-512 normal and truncated normal give them: the
   central branch at every float q in [0, 0.425] (both odd in q); the tail branch at every
   float t in [2^-126, 0.0751] (truncated normal: its q gives only the sign) and, in the
   normal's copy, every t in [2^-33, 0.0751] (q < 0). For the tests: BF16_FAST_ULPS must
   cover it. */
static uint32_t fused_max_ulp_avx512(void) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 q[NV5] = {S1(-1.0f), S1(-1.0f), S1(-1.0f), S1(-1.0f)};
    __m512i worst = _mm512_setzero_si512();
    for (int branch = 0; branch < 3; branch++) {
        const uint32_t b0 = branch == 0 ? 0u : as_u(branch == 1 ? 0x1p-126f : 0x1p-33f);
        const uint32_t b1 = as_u(branch == 0 ? F(0.425) : F(0.0751));
        for (uint64_t b = b0; b <= b1; b += STEP5) {
            __m512 x[NV5], ze[NV5], zf[NV5];
            __mmask16 in[NV5];
            FOR5 {
                __m512i bits = _mm512_add_epi32(_mm512_set1_epi32((int)(b + 16u * v)), lane);
                in[v] = _mm512_cmple_epu32_mask(bits, _mm512_set1_epi32((int)b1));
                x[v] = _mm512_castsi512_ps(bits);
            }
            if (branch == 0) {
                central16(x, ze, 0);
                central16(x, zf, 1);
            } else {
                FOR5 ze[v] = zf[v] = x[v];
                neglog16(ze, 0);
                tailr16(ze, 0);
                neglog16(zf, 1);
                tailr16(zf, 1);
                tail16(branch == 2, q, ze, 0); /* branch 2: the normal's copy */
                tail16(branch == 2, q, zf, 1);
            }
            FOR5 {
                __m512i d = _mm512_abs_epi32(_mm512_sub_epi32(_mm512_castps_si512(ze[v]), _mm512_castps_si512(zf[v])));
                worst = _mm512_mask_max_epu32(worst, in[v], worst, d);
            }
        }
    }
    return _mm512_reduce_max_epu32(worst);
}

static int seg32_avx512(const job_t *J, const uint32_t *restrict wp, int n, char *out) {
    if (J->dtype != DT_F32 && J->dtype != DT_BF16) return 0;
    if (J->kind != K_NORMAL && !(J->kind == K_TRUNC && J->mode == 0)) return 0;
    vk5_t K;
    K.c0 = _mm512_set1_ps(J->cf[0]);
    K.c1 = _mm512_set1_ps(J->cf[1]);
    K.c2 = _mm512_set1_ps(J->cf[2]);
    K.c3 = _mm512_set1_ps(J->cf[3]);
    K.lo = _mm512_set1_ps(J->lof);
    K.hi = _mm512_set1_ps(J->hif);
    const int nt = J->big && (((uintptr_t)out & 63u) == 0);
    /* bfloat16: 4 (values may be subnormal: rounded in integers), 8 (hardware rounding), 12 (and
       mean 0: the fused transform with its margin test; always plain stores, which its
       recomputed values patch in cache: streaming the batch, through an L1 stage, was 4-8%
       slower on 5 * 10^7 values, one or two threads, where plain stores are 6-10% slower
       than streaming in float32) */
    const int bk = !J->bf16_exact ? 4 : J->cf[0] == 0.0f ? 12 : 8;
    const int v = (J->dtype == DT_BF16 ? bk : 0) + nt * 2 + (J->clamp != 0);
    (J->kind == K_NORMAL ? ppnd16n_table : ppnd16t_table)[v](&K, wp, n, out);
    return 1;
}
#undef NV5
#undef STEP5
#undef FOR5
#undef S1
#undef SI
#undef ADD5
#undef SUB5
#undef MUL5
#pragma GCC pop_options
#endif

/* ---------------------------------------------------------------- one batch */
static inline __attribute__((always_inline)) void process_seg_core_body(const job_t *J, int64_t g, int n, char *out) {
    if (n <= 0) return; /* callers never pass an empty batch; this tells the compiler so */
    uint32_t wbuf[2 * SEG + 64 + 16];
    float xs[SEG + 40];
    const int W = (J->dtype == DT_F64) ? 2 : 1;
    uint64_t wd0 = (uint64_t)W * (uint64_t)g;
    uint64_t nw = (uint64_t)W * (uint64_t)n;
    uint64_t grp0 = wd0 >> 5;
    int ng = (int)(((wd0 + nw + 31) >> 5) - grp0);
    gen_groups(J, grp0, ng, wbuf);
    const uint32_t *restrict wp = wbuf + (wd0 & 31);

    if (J->dtype == DT_U32) {
        uint32_t *o = (uint32_t *)out;
        for (int e = 0; e < n; e++) o[e] = wp[e];
        return;
    }
    if (J->dtype == DT_F64) {
        double *o = (double *)out;
        const double c0 = J->c[0], c1 = J->c[1], c2 = J->c[2], c3 = J->c[3];
        if (J->kind == K_UNIFORM) {
            for (int e = 0; e < n; e++) {
                uint64_t k = ((uint64_t)wp[2 * e] << 20) | (uint64_t)(wp[2 * e + 1] >> 12);
                double u = u52_to_d(k) * 0x1p-52;
                o[e] = c0 + c1 * u;
            }
        } else if (J->kind == K_NORMAL) {
            double qd[SEG + 12], td[SEG + 20], zd[SEG + 36];
            for (int e = 0; e < n; e++) {
                uint32_t w0 = wp[2 * e], w1 = wp[2 * e + 1];
                uint64_t m = ((uint64_t)(w0 & 0x7FFFFFFFu) << 21) | (uint64_t)(w1 >> 11);
                double t = (u52_to_d(m) + 0.5) * 0x1p-53;
                td[e] = t;
                qd[e] = t - 0.5;
            }
            ppnd_batch64(n, qd, td, zd);
            for (int e = 0; e < n; e++) {
                double z = zd[e];
                double zn = -z;
                z = (wp[2 * e] >> 31) ? zn : z;
                o[e] = c0 + c1 * z;
            }
        } else if (J->mode == 0) {
            double qd[SEG + 12], td[SEG + 20], zd[SEG + 36];
            for (int e = 0; e < n; e++) {
                uint64_t k = ((uint64_t)wp[2 * e] << 20) | (uint64_t)(wp[2 * e + 1] >> 12);
                double u = (u52_to_d(k) + 0.5) * 0x1p-52;
                double q = c2 + u * c3;
                double aq = q < 0.0 ? -q : q;
                double t = 0.5 - aq;
                t = t > 0x1p-1022 ? t : 0x1p-1022;
                qd[e] = q;
                td[e] = t;
            }
            ppnd_batch64(n, qd, td, zd);
            for (int e = 0; e < n; e++) o[e] = c0 + c1 * zd[e];
        } else {
            for (int e = 0; e < n; e++) {
                uint64_t k = ((uint64_t)wp[2 * e] << 20) | (uint64_t)(wp[2 * e + 1] >> 12);
                double u = (u52_to_d(k) + 0.5) * 0x1p-52;
                double v = 1.0 + u * c3;
                double z = tail64(-0.5, tailr64(c2 + log64(v)));
                o[e] = c0 + c1 * z;
            }
        }
        if (J->clamp) {
            const double lo = J->lo, hi = J->hi;
            for (int e = 0; e < n; e++) {
                double x = o[e];
                x = x < lo ? lo : x;
                x = x > hi ? hi : x;
                o[e] = x;
            }
        }
        return;
    }

#ifdef HAVE_AVX2_PATH
    if (g_path == P_AVX512 && seg32_avx512(J, wp, n, out)) return;
    if (g_path == P_AVX2 && seg32_avx2(J, wp, n, out)) return;
#endif
    /* float32 path (float32 / float16 / bfloat16 outputs). The normal transforms run in
       stages over the batch (log, sqrt, rational) so that independent elements overlap:
       each stage is a long dependency chain per element. */
    const float c0 = J->cf[0], c1 = J->cf[1], c2 = J->cf[2], c3 = J->cf[3];
    float *xo = (J->dtype == DT_F32) ? (float *)out : xs;
    float qs[SEG + 24], ls[SEG + 40], xs2[SEG + 72];
    if (J->kind == K_UNIFORM && J->dtype == DT_BF16 && J->clamp) { /* fused: one pass */
        const float lo = J->lof, hi = J->hif;
        uint16_t *o = (uint16_t *)out;
        for (int e = 0; e < n; e++) {
            float u = (float)(int32_t)(wp[e] >> 8) * 0x1p-24f;
            float x = c0 + c1 * u;
            x = x < lo ? lo : x;
            x = x > hi ? hi : x;
            o[e] = f32_to_bf16(x);
        }
        return;
    }
    if (J->kind == K_UNIFORM) {
        for (int e = 0; e < n; e++) {
            float u = (float)(int32_t)(wp[e] >> 8) * 0x1p-24f;
            xo[e] = c0 + c1 * u;
        }
    } else if (J->kind == K_NORMAL) {
        for (int e = 0; e < n; e++) {
            uint32_t m = wp[e] & 0x7FFFFFFFu;
            float t = ((float)(int32_t)(m >> 7) * 128.0f + ((float)(int32_t)(m & 127u) + 0.5f)) * 0x1p-32f;
            qs[e] = t - 0.5f;
            ls[e] = t;
        }
        ppnd_batch32(n, qs, ls, xs2);
        for (int e = 0; e < n; e++) {
            float z = xs2[e];
            float zn = -z;
            z = (wp[e] >> 31) ? zn : z;
            xo[e] = c0 + c1 * z;
        }
    } else if (J->mode == 0) {
        for (int e = 0; e < n; e++) {
            float u = ((float)(int32_t)(wp[e] >> 9) + 0.5f) * 0x1p-23f;
            float q = c2 + u * c3;
            float aq = q < 0.0f ? -q : q;
            float t = 0.5f - aq;
            t = t > 0x1p-126f ? t : 0x1p-126f;
            qs[e] = q;
            ls[e] = t;
        }
        ppnd_batch32(n, qs, ls, xs2);
        for (int e = 0; e < n; e++) xo[e] = c0 + c1 * xs2[e];
    } else {
        for (int e = 0; e < n; e++) {
            float u = ((float)(int32_t)(wp[e] >> 9) + 0.5f) * 0x1p-23f;
            float v = 1.0f + u * c3;
            ls[e] = c2 + log32(v);
        }
        for (int e = 0; e < n; e++) ls[e] = tailr32(ls[e]);
        for (int e = 0; e < n; e++) {
            float z = tail32(-0.5f, ls[e]);
            xo[e] = c0 + c1 * z;
        }
    }
    if (J->clamp) {
        const float lo = J->lof, hi = J->hif;
        if (J->dtype == DT_F32) {
            for (int e = 0; e < n; e++) {
                float x = xo[e];
                x = x < lo ? lo : x;
                x = x > hi ? hi : x;
                xo[e] = x;
            }
        } else if (J->dtype == DT_BF16) { /* clamp and round in one pass */
            uint16_t *o = (uint16_t *)out;
            for (int e = 0; e < n; e++) {
                float x = xs[e];
                x = x < lo ? lo : x;
                x = x > hi ? hi : x;
                o[e] = f32_to_bf16(x);
            }
        } else {
            uint16_t *o = (uint16_t *)out;
            for (int e = 0; e < n; e++) {
                float x = xs[e];
                x = x < lo ? lo : x;
                x = x > hi ? hi : x;
                o[e] = f32_to_f16(x);
            }
        }
        return;
    }
    if (J->dtype == DT_BF16) {
        uint16_t *o = (uint16_t *)out;
        for (int e = 0; e < n; e++) o[e] = f32_to_bf16(xs[e]);
    } else if (J->dtype == DT_F16) {
        uint16_t *o = (uint16_t *)out;
        for (int e = 0; e < n; e++) o[e] = f32_to_f16(xs[e]);
    }
}

/* process_seg_core_body compiled once per path, so that forcing a path also forces the
   code gcc vectorizes for the batch loops (the float64, float16 and tail-mode loops) */
static void process_seg_core_portable(const job_t *J, int64_t g, int n, char *out) {
    process_seg_core_body(J, g, n, out);
}
#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void process_seg_core_avx2(const job_t *J, int64_t g, int n, char *out) {
    process_seg_core_body(J, g, n, out);
}
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void process_seg_core_avx512(const job_t *J, int64_t g,
                                                                                                   int n, char *out) {
    process_seg_core_body(J, g, n, out);
}
#endif

static void process_seg_core(const job_t *J, int64_t g, int n, char *out) {
#ifdef HAVE_AVX2_PATH
    if (g_path == P_AVX512) {
        process_seg_core_avx512(J, g, n, out);
        return;
    }
    if (g_path == P_AVX2) {
        process_seg_core_avx2(J, g, n, out);
        return;
    }
#endif
    process_seg_core_portable(J, g, n, out);
}

/* Large outputs: compute a batch into an L1-resident buffer, then write it with
   non-temporal stores (no read-for-ownership of the destination lines). Values are
   unchanged; only how the bytes reach memory differs. */
#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2"))) static void stream_copy_avx2(char *dst, const char *src, size_t bytes) {
    size_t i = 0;
    while (i < bytes && ((uintptr_t)(dst + i) & 31)) {
        dst[i] = src[i];
        i++;
    }
    for (; i + 32 <= bytes; i += 32)
        _mm256_stream_si256((__m256i *)(dst + i), _mm256_loadu_si256((const __m256i *)(src + i)));
    for (; i < bytes; i++) dst[i] = src[i];
}
#endif

static void process_seg_buffered(const job_t *J, int64_t g, int n, char *out) {
#ifdef HAVE_AVX2_PATH
    if (J->nt && g_have_avx2) {
        _Alignas(64) char buf[SEG * 8 + 192];
        process_seg_core(J, g, n, buf);
        stream_copy_avx2(out, buf, (size_t)n * (size_t)J->esize);
        return;
    }
#endif
    process_seg_core(J, g, n, out);
}

/* elements [g, g + n) into out: whole groups of uniform / bits outputs go straight from
   the Philox registers to memory, everything else (and the partial groups at either end)
   through process_seg_core */
static void process_seg(const job_t *J, int64_t g, int n, char *out) {
#ifdef HAVE_AVX2_PATH
    if (g_have_avx2 && direct_ok(J)) {
        int head = (int)((32 - (g & 31)) & 31);
        if (head > n) head = n;
        if (head) process_seg_buffered(J, g, head, out);
        int ng = (n - head) >> 5;
        if (ng) (g_path == P_AVX512 ? fill_groups_direct512 : fill_groups_direct)(J, (uint64_t)(g + head) >> 5, ng, out + (size_t)head * J->esize);
        int done = head + 32 * ng;
        if (done < n) process_seg_buffered(J, g + done, n - done, out + (size_t)done * J->esize);
        return;
    }
#endif
    process_seg_buffered(J, g, n, out);
}

/* ---------------------------------------------------------------- geometry */
static void process_range(const job_t *J, int64_t f0, int64_t f1) {
    int64_t f = f0;
    while (f < f1) {
        int64_t row = f / J->rowlen, col = f % J->rowlen;
        int64_t g = J->off[J->ndim - 1] + col, rem = row;
        for (int d = J->ndim - 2; d >= 0; d--) {
            int64_t i = rem % J->size[d];
            rem /= J->size[d];
            g += (J->off[d] + i) * J->gstride[d];
        }
        int64_t len = J->rowlen - col;
        if (len > f1 - f) len = f1 - f;
        for (int64_t p = 0; p < len; p += SEG) {
            int64_t m = len - p;
            if (m > SEG) m = SEG;
            process_seg(J, g + p, (int)m, J->out + (f + p) * J->esize);
        }
        f += len;
    }
}

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#endif

/* populate's share of a range: [a, b), and madvise's result */
typedef struct {
    uintptr_t a, b;
    int rc;
} pop_t;

static void *pop_main(void *arg) {
    pop_t *p = (pop_t *)arg;
#if defined(__linux__)
    p->rc = p->b > p->a ? madvise((void *)p->a, p->b - p->a, MADV_POPULATE_WRITE) : 0;
#else
    p->rc = -1;
#endif
    return NULL;
}

/* a thread's share: chunks [c0, c1) of fill J, or (J NULL) populate's share pop */
typedef struct {
    const job_t *J;
    int64_t c0, c1, pf;
    pop_t *pop;
} targ_t;

/* Fill chunks [c0, c1). pf > 0: first fault in the whole pages of this share's output with
   MADV_POPULATE_WRITE, pf bytes at a time just ahead of the fill (contents unchanged; the
   pages shared with the neighbouring shares are faulted by the stores; where madvise fails
   the stores take the faults) */
static void run_chunks(const job_t *J, int64_t c0, int64_t c1, int64_t pf) {
#if defined(__linux__)
    uintptr_t pg = 4096, p = 0, pb = 0;
    if (pf > 0 && c1 > c0) {
        long ps = sysconf(_SC_PAGESIZE);
        if (ps > 0) pg = (uintptr_t)ps;
        int64_t e1 = c1 * J->chunk < J->total ? c1 * J->chunk : J->total;
        p = ((uintptr_t)(J->out + c0 * J->chunk * J->esize) + pg - 1) & ~(pg - 1);
        pb = (uintptr_t)(J->out + e1 * J->esize) & ~(pg - 1);
    }
#endif
    for (int64_t c = c0; c < c1; c++) {
        int64_t f0 = c * J->chunk, f1 = f0 + J->chunk;
        if (f1 > J->total) f1 = J->total;
#if defined(__linux__)
        uintptr_t e = (uintptr_t)(J->out + f1 * J->esize);
        if (p < pb && p < e) {
            uintptr_t q = p + ((uintptr_t)pf & ~(pg - 1));
            if (q < e) q = (e + pg - 1) & ~(pg - 1);
            if (q > pb) q = pb;
            if (madvise((void *)p, q - p, MADV_POPULATE_WRITE) != 0) pb = 0; /* the stores fault */
            p = q;
        }
#endif
        process_range(J, f0, f1);
    }
}

static void fence(void) {
#ifdef HAVE_AVX2_PATH
    _mm_sfence(); /* order the non-temporal stores before the thread reports completion */
#endif
}

static void run_share(const targ_t *t) {
    if (t->J) {
        run_chunks(t->J, t->c0, t->c1, t->pf);
        fence();
    } else if (t->pop) {
        pop_main(t->pop);
    }
}

static void *thread_main(void *arg) {
    run_share((const targ_t *)arg);
    return NULL;
}

/* least stack of the kernel's worker threads (where the default is smaller), and the least
   free stack of the calling thread for it to do a share itself (a batch needs about 170 KiB) */
#define KERNEL_STACK ((size_t)4 << 20)
#define KERNEL_STACK_NEED ((size_t)512 << 10)

/* ---------------------------------------------------------------- worker pool
   Starting and joining a thread per fill costs ~0.1 ms here (a 2-vCPU VM), as much as
   filling 100 K values: the workers are kept. Each waits for the next job by polling for
   POOL_SPIN_NS (back-to-back fills of a model find it awake), then sleeps on a condition
   variable. One fill at a time uses the pool; a concurrent fill (another Python thread: the
   GIL is released) starts its own threads as before. Scheduling only: values never change. */
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#define POOL_MAX 64
#define POOL_SPIN_NS 200000
static pthread_mutex_t g_pool_use = PTHREAD_MUTEX_INITIALIZER; /* held by the fill using the pool */
static pthread_mutex_t g_pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_pool_work = PTHREAD_COND_INITIALIZER, g_pool_done = PTHREAD_COND_INITIALIZER;
static int g_pool_n;                             /* workers started */
static targ_t g_pool_task[POOL_MAX];             /* worker i's share of the current job (J NULL: none) */
static uint64_t g_pool_seen0[POOL_MAX];          /* the job number when worker i was started */
static _Atomic uint64_t g_pool_gen;              /* job number */
static _Atomic int g_pool_left;                  /* workers not done with the current job */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *pool_main(void *arg) {
    int i = (int)(intptr_t)arg;
    uint64_t seen = g_pool_seen0[i], g;
    for (;;) {
        int64_t t0 = now_ns();
        int n = 0;
        while ((g = atomic_load_explicit(&g_pool_gen, memory_order_acquire)) == seen) {
            cpu_relax();
            if ((++n & 255) == 0 && (sched_yield(), now_ns() - t0 > POOL_SPIN_NS)) {
                pthread_mutex_lock(&g_pool_mu);
                while ((g = atomic_load_explicit(&g_pool_gen, memory_order_acquire)) == seen)
                    pthread_cond_wait(&g_pool_work, &g_pool_mu);
                pthread_mutex_unlock(&g_pool_mu);
                break;
            }
        }
        seen = g;
        targ_t t = g_pool_task[i];
        run_share(&t);
        if (atomic_fetch_sub_explicit(&g_pool_left, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&g_pool_mu);
            pthread_cond_signal(&g_pool_done);
            pthread_mutex_unlock(&g_pool_mu);
        }
    }
    return NULL;
}

static void pool_after_fork(void) { /* the child has none of the parent's workers */
    g_pool_n = 0;
    pthread_mutex_init(&g_pool_use, NULL);
    pthread_mutex_init(&g_pool_mu, NULL);
    pthread_cond_init(&g_pool_work, NULL);
    pthread_cond_init(&g_pool_done, NULL);
    atomic_store(&g_pool_left, 0);
}

/* Run shares ta[self_share..T) on the pool's workers and ta[0] here (if self_share); returns 0
   without running anything when the pool is busy or cannot get enough workers. */
static int pool_run(const targ_t *ta, int T, int self_share, const pthread_attr_t *attr) {
    int need = T - self_share;
    if (need < 1 || need > POOL_MAX || pthread_mutex_trylock(&g_pool_use) != 0) return 0;
    while (g_pool_n < need) {
        pthread_t th;
        g_pool_seen0[g_pool_n] = atomic_load(&g_pool_gen);
        g_pool_task[g_pool_n].J = NULL;
        g_pool_task[g_pool_n].pop = NULL;
        if (pthread_create(&th, attr, pool_main, (void *)(intptr_t)g_pool_n) != 0) break;
        pthread_detach(th);
        g_pool_n++;
    }
    if (g_pool_n < need) {
        pthread_mutex_unlock(&g_pool_use);
        return 0;
    }
    for (int i = 0; i < g_pool_n; i++) {
        if (i < need)
            g_pool_task[i] = ta[self_share + i];
        else
            g_pool_task[i].J = NULL, g_pool_task[i].pop = NULL;
    }
    pthread_mutex_lock(&g_pool_mu);
    atomic_store(&g_pool_left, g_pool_n);
    atomic_fetch_add_explicit(&g_pool_gen, 1, memory_order_release);
    pthread_cond_broadcast(&g_pool_work);
    pthread_mutex_unlock(&g_pool_mu);
    if (self_share) run_share(&ta[0]);
    int64_t t0 = now_ns();
    int n = 0;
    while (atomic_load_explicit(&g_pool_left, memory_order_acquire) != 0) {
        cpu_relax();
        if ((++n & 255) == 0 && (sched_yield(), now_ns() - t0 > POOL_SPIN_NS)) {
            pthread_mutex_lock(&g_pool_mu);
            while (atomic_load_explicit(&g_pool_left, memory_order_acquire) != 0)
                pthread_cond_wait(&g_pool_done, &g_pool_mu);
            pthread_mutex_unlock(&g_pool_mu);
            break;
        }
    }
    pthread_mutex_unlock(&g_pool_use);
    return 1;
}


/* attributes giving a worker thread at least KERNEL_STACK; 0 (attr unset) where the
   default stack is large enough or cannot be set */
static int kernel_attr(pthread_attr_t *attr) {
    size_t dflt = 0;
    if (pthread_attr_init(attr) != 0) return 0;
    if (pthread_attr_getstacksize(attr, &dflt) != 0 || dflt >= KERNEL_STACK ||
        pthread_attr_setstacksize(attr, KERNEL_STACK) != 0) {
        pthread_attr_destroy(attr);
        return 0;
    }
    return 1;
}

/* Run shares ta[0..T): ta[self_share..T) on the pool's workers (or, where the pool is busy,
   on threads of their own, with at least KERNEL_STACK) and ta[0] here if self_share; a
   share whose thread cannot be started runs here. Fills and populate share it. */
static void run_shares(const targ_t *ta, int T, int self_share) {
    pthread_attr_t attr;
    int have_attr = kernel_attr(&attr);
    if (!pool_run(ta, T, self_share, have_attr ? &attr : NULL)) {
        pthread_t th[256];
        int started[256] = {0};
        for (int t = self_share; t < T; t++)
            started[t] = pthread_create(&th[t], have_attr ? &attr : NULL, thread_main, (void *)&ta[t]) == 0;
        if (self_share) run_share(&ta[0]);
        for (int t = self_share; t < T; t++) {
            if (started[t])
                pthread_join(th[t], NULL);
            else
                run_share(&ta[t]);
        }
    }
    if (have_attr) pthread_attr_destroy(&attr);
}

/* bytes of stack left below this frame in the calling thread (SIZE_MAX if unknown). The
   stack's low end is looked up once per thread (for the main thread glibc reads
   /proc/self/maps to find it) and cached. */
static _Thread_local uintptr_t t_stack_lo;
static _Thread_local int t_stack_known; /* 0: not yet looked up, 1: known, -1: unknown */

static size_t stack_left(void) {
    char here;
    if (t_stack_known == 0) {
        t_stack_known = -1;
#if defined(__linux__)
        pthread_attr_t a;
        void *lo = NULL;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &a) == 0) {
            if (pthread_attr_getstack(&a, &lo, &size) == 0 && lo != NULL && (uintptr_t)&here > (uintptr_t)lo) {
                t_stack_lo = (uintptr_t)lo;
                t_stack_known = 1;
            }
            pthread_attr_destroy(&a);
        }
#endif
    }
    if (t_stack_known != 1 || (uintptr_t)&here < t_stack_lo) return (size_t)-1;
    return (size_t)((uintptr_t)&here - t_stack_lo); /* the stack grows down */
}

static int seq_to_i64(PyObject *seq, int64_t *dst, int maxn, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > maxn) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: at most %d dimensions", what, maxn);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        dst[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (dst[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return (int)n;
}

/* fill(ptr, dtype, kind, mode, clamp, k0, k1, sub, (c0,c1,c2,c3), lo, hi, gshape, offsets, sizes, nthreads, chunk) */
/* unbiased exponent of a float32; -127 for zero and the subnormals */
static int fexp32(float x) { return (int)((as_u(x) >> 23) & 0xFFu) - 127; }

/* Whether no value of the job (float32 path) can be a nonzero subnormal (|x| < 2^-126).
   Then vcvtne2ps2bf16, which reads subnormals as zero, rounds every vector exactly as the
   stream does, and the AVX-512 bfloat16 stores skip their per-vector check. Each value is
   c0 + P (then clamped), P the rounded product of a scale s and a value z that is 0 or at
   least 2^g in magnitude: when c0 and P are both 0 or multiples of 2^-126, their sum and
   its rounding are 0 or at least 2^-126. z: the uniform's integer k (g = 0, s = c1 2^-24);
   the normal's central value, |z| >= |q| >= 2^-33 (q = t - 1/2 on the grid of t, 2^-33)
   and tail values above 1; the truncated normal's q = c2 + RN(u c3), u >= 2^-24 on the
   grid 2^-24. One extra bit of margin throughout. */
static int no_subnormal_values(const job_t *J) {
    float s, c0 = J->cf[0];
    int g;
    if (J->kind == K_UNIFORM) {
        s = J->cf[1] * 0x1p-24f;
        g = -1;
    } else if (J->kind == K_NORMAL) {
        s = J->cf[1];
        g = -34;
    } else if (J->kind == K_TRUNC && J->mode == 0) {
        float c2 = J->cf[2], c3 = J->cf[3];
        if (c3 == 0.0f || fexp32(c3) - 25 < -126) return 0; /* u c3 must not be subnormal */
        g = fexp32(c3) - 24 - 23 - 1;
        if (c2 != 0.0f) g = g < fexp32(c2) - 24 ? g : fexp32(c2) - 24;
        s = J->cf[1];
    } else {
        return 0;
    }
    if (J->clamp && ((J->lof != 0.0f && fexp32(J->lof) < -126) || (J->hif != 0.0f && fexp32(J->hif) < -126)))
        return 0;
    if (s == 0.0f) return c0 == 0.0f || fexp32(c0) >= -126;
    if (fexp32(s) == -127) return 0; /* a subnormal scale */
    int pe = fexp32(s) + g;          /* |P| >= 2^pe */
    if (c0 == 0.0f) return pe >= -126;
    return pe - 23 >= -126 && fexp32(c0) - 23 >= -126;
}

static PyObject *py_fill(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ptr, k0, k1, sub;
    int dtype, kind, mode, clamp, nthreads;
    double c[4], lo, hi;
    long long chunk, pf = 0;
    PyObject *gs, *os, *ss;
    if (!PyArg_ParseTuple(args, "KiiiiKKK(dddd)ddOOOiL|L", &ptr, &dtype, &kind, &mode, &clamp, &k0, &k1, &sub, &c[0],
                          &c[1], &c[2], &c[3], &lo, &hi, &gs, &os, &ss, &nthreads, &chunk, &pf))
        return NULL;
    job_t J;
    memset(&J, 0, sizeof J);
    int64_t gshape[MAXD];
    int n1 = seq_to_i64(gs, gshape, MAXD, "global_shape");
    if (n1 < 0) return NULL;
    int n2 = seq_to_i64(os, J.off, MAXD, "offsets");
    if (n2 < 0) return NULL;
    int n3 = seq_to_i64(ss, J.size, MAXD, "sizes");
    if (n3 < 0) return NULL;
    if (n1 != n2 || n1 != n3 || n1 < 1) {
        PyErr_SetString(PyExc_ValueError, "global_shape, offsets and sizes need the same length >= 1");
        return NULL;
    }
    if (dtype < 0 || dtype > 4 || kind < 0 || kind > 3 || chunk < 1 || nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "bad dtype/kind/chunk/nthreads code");
        return NULL;
    }
    J.ndim = n1;
    int64_t st = 1, total = 1;
    for (int d = n1 - 1; d >= 0; d--) {
        if (J.off[d] < 0 || J.size[d] < 0 || J.off[d] + J.size[d] > gshape[d]) {
            PyErr_SetString(PyExc_ValueError, "box outside the global shape");
            return NULL;
        }
        J.gstride[d] = st;
        st *= gshape[d];
        total *= J.size[d];
    }
    J.kind = kind;
    J.dtype = dtype;
    J.mode = mode;
    J.clamp = clamp;
    J.k0 = (uint32_t)k0;
    J.k1 = (uint32_t)k1;
    J.sub = (uint32_t)sub;
    for (int i = 0; i < 4; i++) {
        J.c[i] = c[i];
        J.cf[i] = (float)c[i];
    }
    J.lo = lo;
    J.hi = hi;
    J.lof = (float)lo;
    J.hif = (float)hi;
    J.rowlen = J.size[n1 - 1];
    J.total = total;
    J.chunk = chunk;
    J.out = (char *)(uintptr_t)ptr;
    J.esize = (dtype == DT_F64) ? 8 : (dtype == DT_F32 || dtype == DT_U32) ? 4 : 2;
    if (total == 0) Py_RETURN_NONE;
    /* large outputs are written with non-temporal stores: uniform and raw bits through
       process_seg (straight from registers, or staged in L1 for the partial groups), the
       normals by the last stage of ppnd_seg8; the other paths (float64, float16, the
       truncated normal's tail mode) store plainly */
    J.big = (double)total * J.esize >= g_nt_min_bytes;
    J.nt = J.big && (kind == K_UNIFORM || dtype == DT_U32);
    J.bf16_exact = no_subnormal_values(&J);

    int64_t nchunks = total / chunk + (total % chunk != 0); /* no int64 overflow for any chunk */
    int T = nthreads;
    if (T > nchunks) T = (int)nchunks;
    if (T > 256) T = 256;
    /* A batch takes about 170 KiB of stack (SEG-sized scratch arrays). The worker threads get
       KERNEL_STACK explicitly (the default is 128 KiB on some libcs); the calling thread does
       its share itself only if its own stack has room (a Python thread started after
       threading.stack_size(128 * 1024) has not), else a worker does it. */
    int self_share = stack_left() >= KERNEL_STACK_NEED; /* 1: this thread does share 0 */
    Py_BEGIN_ALLOW_THREADS;
    if (T <= 1 && self_share) {
        run_chunks(&J, 0, nchunks, pf);
        fence();
    } else {
        if (T < 1) T = 1;
        targ_t ta[256];
        for (int t = 0; t < T; t++) {
            ta[t].J = &J;
            ta[t].c0 = nchunks * t / T;
            ta[t].c1 = nchunks * (t + 1) / T;
            ta[t].pf = pf;
            ta[t].pop = NULL;
        }
        run_shares(ta, T, self_share);
    }
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

/* philox(c0, c1, c2, c3, k0, k1) -> 4-tuple: one Philox4x32-10 block (for known-answer tests) */
static PyObject *py_philox(PyObject *self, PyObject *args) {
    (void)self;
    unsigned int c[4], k[2];
    if (!PyArg_ParseTuple(args, "IIIIII", &c[0], &c[1], &c[2], &c[3], &k[0], &k[1])) return NULL;
    /* the block counter's fourth word c3 is 0 in the stream, but known-answer tests set it */
    uint32_t o[4];
    philox1(k[0], k[1], c[0], c[1], c[2], c[3], o);
    return Py_BuildValue("(IIII)", o[0], o[1], o[2], o[3]);
}

/* populate(ptr, nbytes, nthreads, huge=0) -> bool: fault in, for writing, the whole pages
   inside [ptr, ptr + nbytes) with MADV_POPULATE_WRITE (Linux 5.14+), split over threads.
   Contents are unchanged. First-touch page faults are the largest cost of materializing a
   model in fresh memory, and taken this way, before the fill, they cost up to a third less
   than when the fill's stores take them one page at a time (a third on the Xeon VM, no
   less on the Zen 5 one: docs/performance.md).
   huge: the transparent huge page size (0: leave the pages as they are); the range's whole
   pages are first advised MADV_HUGEPAGE, so the kernel maps (and zeroes) its aligned
   interior a huge page at a time (and the rest in smaller huge pages where the kernel has
   them enabled), and the threads' shares are split on huge page boundaries. The
   advice is only a hint: where it fails, the pages stay small. Returns False if populating
   failed (a kernel without MADV_POPULATE_WRITE, or no memory): the fill then takes the
   remaining faults itself. */
static PyObject *py_populate(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long ptr, nbytes, huge = 0;
    int nthreads;
    if (!PyArg_ParseTuple(args, "KKi|K", &ptr, &nbytes, &nthreads, &huge)) return NULL;
#if defined(__linux__)
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096u;
    uintptr_t a = ((uintptr_t)ptr + page - 1) & ~(page - 1), b = ((uintptr_t)ptr + (uintptr_t)nbytes) & ~(page - 1);
    if (b <= a) Py_RETURN_TRUE;
#ifdef MADV_HUGEPAGE
    if (huge > page && (huge & (huge - 1)) == 0) {
        uintptr_t ha = (a + (uintptr_t)huge - 1) & ~((uintptr_t)huge - 1), hb = b & ~((uintptr_t)huge - 1);
        /* the threads' shares below are whole huge pages of [ha, hb), plus the ends [a, ha)
           and [hb, b), which go to the first and last thread. The advice covers all of
           [a, b): the kernel maps a folio only where it fits inside the advised range, so
           PMD-size pages still land in [ha, hb) only, while the smaller multi-size huge
           pages (mTHP, where enabled) also cover the ends and ranges under a huge page */
        if (madvise((void *)a, b - a, MADV_HUGEPAGE) == 0) {
            if (hb > ha)
                page = (uintptr_t)huge;
            else
                nthreads = 1; /* under one huge page: threads splitting it on small pages would
                                 fault into each other's multi-size huge page blocks */
        }
    }
#endif
    int T = nthreads < 1 ? 1 : nthreads > 64 ? 64 : nthreads;
    /* split points on multiples of page (the huge page size when advised) */
    uintptr_t a2 = (a + page - 1) & ~(page - 1), b2 = b & ~(page - 1);
    if (b2 < a2) b2 = a2;
    uintptr_t pages = (b2 - a2) / page;
    if ((uintptr_t)T > pages) T = pages > 0 ? (int)pages : 1;
    pop_t pt[64];
    targ_t ta[64];
    for (int t = 0; t < T; t++) {
        pt[t].a = t == 0 ? a : a2 + pages * (uintptr_t)t / (uintptr_t)T * page;
        pt[t].b = t == T - 1 ? b : a2 + pages * (uintptr_t)(t + 1) / (uintptr_t)T * page;
        pt[t].rc = 0;
        memset(&ta[t], 0, sizeof ta[t]);
        ta[t].pop = &pt[t];
    }
    Py_BEGIN_ALLOW_THREADS;
    if (T <= 1)
        pop_main(&pt[0]);
    else
        run_shares(ta, T, 1); /* the fill's worker pool, as a fill's shares */
    Py_END_ALLOW_THREADS;
    for (int t = 0; t < T; t++)
        if (pt[t].rc != 0) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
#else
    (void)ptr;
    (void)nbytes;
    (void)nthreads;
    (void)huge;
    Py_RETURN_FALSE;
#endif
}

/* the CPU features each path needs (gcc's names, as in __builtin_cpu_supports) */
static const char *const PATH_NAMES[3] = {"portable", "avx2", "avx512"};

#ifdef HAVE_AVX2_PATH
static int cpu_has(const char *f) {
    /* __builtin_cpu_supports needs a string literal */
    if (!strcmp(f, "avx2")) return __builtin_cpu_supports("avx2");
    if (!strcmp(f, "avx512f")) return __builtin_cpu_supports("avx512f");
    if (!strcmp(f, "avx512bw")) return __builtin_cpu_supports("avx512bw");
    if (!strcmp(f, "avx512dq")) return __builtin_cpu_supports("avx512dq");
    if (!strcmp(f, "avx512vl")) return __builtin_cpu_supports("avx512vl");
    if (!strcmp(f, "avx512bf16")) return __builtin_cpu_supports("avx512bf16");
    if (!strcmp(f, "fma")) return __builtin_cpu_supports("fma");
    return 0;
}
#endif

static const char *const AVX2_FLAGS[] = {"avx2", NULL};
static const char *const AVX512_FLAGS[] = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512bf16", "fma", NULL};

/* paths() -> dict: path name -> tuple of the CPU flags it needs that this CPU lacks (empty:
   runnable; a build without the SIMD paths lists them as needing "x86-64 gcc build") */
static PyObject *py_paths(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    const char *const *need[3] = {NULL, AVX2_FLAGS, AVX512_FLAGS};
    for (int p = 0; p < 3; p++) {
        PyObject *miss = PyList_New(0);
        if (!miss) goto fail;
        for (int i = 0; need[p] && need[p][i]; i++) {
#ifdef HAVE_AVX2_PATH
            if (cpu_has(need[p][i])) continue;
            PyObject *s = PyUnicode_FromString(need[p][i]);
#else
            if (i > 0) break;
            PyObject *s = PyUnicode_FromString("a kernel built with its SIMD paths (x86-64, gcc)");
#endif
            if (!s || PyList_Append(miss, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(miss);
                goto fail;
            }
            Py_DECREF(s);
        }
        PyObject *t = PyList_AsTuple(miss);
        Py_DECREF(miss);
        if (!t || PyDict_SetItemString(d, PATH_NAMES[p], t) < 0) {
            Py_XDECREF(t);
            goto fail;
        }
        Py_DECREF(t);
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}

/* get_path() -> str: the kernel path in use */
static PyObject *py_get_path(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(PATH_NAMES[g_path]);
}

/* set_path(name): force a path; ValueError for an unknown name, RuntimeError for a path
   this CPU (or build) cannot run */
static PyObject *py_set_path(PyObject *self, PyObject *args) {
    (void)self;
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int p = 0; p < 3; p++) {
        if (strcmp(name, PATH_NAMES[p])) continue;
        if (p > g_max_path) {
            PyErr_Format(PyExc_RuntimeError, "kernel path '%s' is not available on this CPU/build (best: '%s')", name,
                         PATH_NAMES[g_max_path]);
            return NULL;
        }
        g_path = p;
        Py_RETURN_NONE;
    }
    PyErr_Format(PyExc_ValueError, "kernel path must be 'portable', 'avx2' or 'avx512', got '%s'", name);
    return NULL;
}

/* has_avx2() -> bool: whether the AVX2 Philox path is used */
static PyObject *py_has_avx2(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyBool_FromLong(g_have_avx2);
}

static PyObject *py_normal_tail_words(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromUnsignedLong(g_normal_tail_words);
}

/* fused_max_ulp() -> (worst, BF16_FAST_ULPS, BF16_FAST_MARGIN): the bfloat16 shortcut's sweep
   (every input of the central and tail branches, about 2 G values) and its constants; None
   where this CPU has no AVX-512 path */
static PyObject *py_fused_max_ulp(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
#ifdef HAVE_AVX2_PATH
    if (g_max_path >= P_AVX512) {
        uint32_t worst;
        Py_BEGIN_ALLOW_THREADS;
        worst = fused_max_ulp_avx512();
        Py_END_ALLOW_THREADS;
        return Py_BuildValue("(III)", worst, (unsigned)BF16_FAST_ULPS, (unsigned)BF16_FAST_MARGIN);
    }
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fill", py_fill, METH_VARARGS, "Fill a box of a keyed stream into raw memory (releases the GIL)."},
    {"philox", py_philox, METH_VARARGS, "One Philox4x32-10 block: philox(c0, c1, c2, c3, k0, k1)."},
    {"has_avx2", py_has_avx2, METH_NOARGS, "Whether the AVX2 (or AVX-512) SIMD path is active."},
    {"paths", py_paths, METH_NOARGS, "Kernel paths -> the CPU flags each lacks on this machine."},
    {"get_path", py_get_path, METH_NOARGS, "The kernel path in use."},
    {"set_path", py_set_path, METH_VARARGS, "Force a kernel path: 'portable', 'avx2' or 'avx512'."},
    {"normal_tail_words", py_normal_tail_words, METH_NOARGS, "The normal's tail test on a word w: (w & 0x7FFFFFFF) < this."},
    {"fused_max_ulp", py_fused_max_ulp, METH_NOARGS, "The bfloat16 shortcut's sweep: (worst ulps, bound, margin), or None without AVX-512."},
    {"populate", py_populate, METH_VARARGS, "Fault in the whole pages of a memory range for writing, optionally as transparent huge pages (releases the GIL)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_native", "torchinit keyed engine native kernel", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    g_max_path = P_PORTABLE;
    if (cpu_has("avx2")) {
        g_max_path = P_AVX2;
        int all = 1;
        for (int i = 0; AVX512_FLAGS[i]; i++) all &= cpu_has(AVX512_FLAGS[i]) != 0;
        if (all) g_max_path = P_AVX512;
    }
    g_path = g_max_path;
    if (getenv("TORCHINIT_NATIVE_NO_AVX2")) g_path = P_PORTABLE; /* older switch, kept */
    if (getenv("TORCHINIT_NATIVE_NO_NT")) g_nt_min_bytes = 1e300;
#endif
    init_lut();
    init_normal_tail_words();
    pthread_atfork(NULL, NULL, pool_after_fork);
    PyObject *m = PyModule_Create(&moddef);
    if (m) PyModule_AddIntConstant(m, "STREAM_VERSION", 1);
    return m;
}
