"""Constants of keyed stream version 1 (see docs/keyed-stream.md).

Every floating-point constant is given as a Python float (IEEE double). The
float32 variant of a constant is that double rounded to nearest-even float32
(``struct.unpack('f', struct.pack('f', c))``); the C kernel uses the same
double literals cast to ``float``, so both backends hold identical bits.
"""

from __future__ import annotations

#: Version of the stream definition. Any change to how bits become values bumps it.
STREAM_VERSION = 1

# Philox4x32-10 (Salmon et al. 2011, Random123).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

# Counter word 2 selects a sub-stream.
SUBSTREAM_VALUES = 0
SUBSTREAM_SPARSE = 1

# Key derivation: blake2b, 8-byte digest, this personalization.
KEY_PERSON = b"torchinit-key-v1"

# --- natural logarithm: x = 2^e * m, m in [sqrt(1/2), sqrt(2)], s = (m-1)/(m+1),
#     log m = s * sum_k L_k s^(2k), L_k = 2/(2k+1) (atanh series); 6 terms (f32), 12 (f64).
LOG_TERMS_F32 = 6
LOG_TERMS_F64 = 12
LOG_COEF = [2.0 / (2 * k + 1) for k in range(LOG_TERMS_F64)]
SQRT2 = 1.4142135623730951
LN2_HI_F32 = 0.693145751953125          # 0x3f317200, exact in float32
LN2_LO_F32 = 1.42860682030941723212e-06
LN2_HI_F64 = 6.93147180369123816490e-01  # fdlibm split, exact in double
LN2_LO_F64 = 1.90821492927058770002e-10

# --- inverse normal CDF: Wichura (1988), algorithm AS 241.
# PPND7 (float32 path, about 1e-7 relative) and PPND16 (float64 path, about 1e-16).
# Lists are in increasing powers; B, D, F include the leading 1.
PPND7 = dict(
    A=[3.3871327179, 50.434271938, 159.29113202, 59.109374720],
    B=[1.0, 17.895169469, 78.757757664, 67.187563600],
    C=[1.4234372777, 2.7568153900, 1.3067284816, 0.17023821103],
    D=[1.0, 0.73700164250, 0.12021132975],
    E=[6.6579051150, 3.0812263860, 0.42868294337, 0.017337203997],
    F=[1.0, 0.24197894225, 0.012258202635],
)
PPND16 = dict(
    A=[3.3871328727963666080e0, 1.3314166789178437745e+2, 1.9715909503065514427e+3,
       1.3731693765509461125e+4, 4.5921953931549871457e+4, 6.7265770927008700853e+4,
       3.3430575583588128105e+4, 2.5090809287301226727e+3],
    B=[1.0, 4.2313330701600911252e+1, 6.8718700749205790830e+2, 5.3941960214247511077e+3,
       2.1213794301586595867e+4, 3.9307895800092710610e+4, 2.8729085735721942674e+4,
       5.2264952788528545610e+3],
    C=[1.42343711074968357734e0, 4.63033784615654529590e0, 5.76949722146069140550e0,
       3.64784832476320460504e0, 1.27045825245236838258e0, 2.41780725177450611770e-1,
       2.27238449892691845833e-2, 7.74545014278341407640e-4],
    D=[1.0, 2.05319162663775882187e0, 1.67638483018380384940e0, 6.89767334985100004550e-1,
       1.48103976427480074590e-1, 1.51986665636164571966e-2, 5.47593808499534494600e-4,
       1.05075007164441684324e-9],
    E=[6.65790464350110377720e0, 5.46378491116411436990e0, 1.78482653991729133580e0,
       2.96560571828504891230e-1, 2.65321895265761230930e-2, 1.24266094738807843860e-3,
       2.71155556874348757815e-5, 2.01033439929228813265e-7],
    F=[1.0, 5.99832206555887937690e-1, 1.36929880922735805310e-1, 1.48753612908506148525e-2,
       7.86869131145613259100e-4, 1.84631831751005468180e-5, 1.42151175831644588870e-7,
       2.04426310338993978564e-15],
)
PPND_SPLIT1 = 0.425      # |q| <= 0.425: central rational in r = 0.180625 - q^2
PPND_CONST1 = 0.180625
PPND_SPLIT2 = 5.0        # tail: r = sqrt(-log t); r <= 5: r - 1.6 (C/D) else r - 5 (E/F)
PPND_CONST2 = 1.6

#: Smallest positive normal numbers: the log argument is clamped to at least this.
TINY_F32 = 2.0 ** -126
TINY_F64 = 2.0 ** -1022

# Kernel codes (shared with _native.c).
KIND_UNIFORM, KIND_NORMAL, KIND_TRUNC, KIND_BITS = 0, 1, 2, 3
DT_F32, DT_F64, DT_F16, DT_BF16, DT_U32 = 0, 1, 2, 3, 4
