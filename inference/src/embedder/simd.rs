//! Hot element-wise loops compiled three times: for the baseline x86-64 target (SSE2), for
//! AVX2 + FMA and for AVX-512, chosen at run time. The portable code is the same for all;
//! inside a `target_feature` function the compiler vectorises it eight or sixteen lanes wide.

use std::sync::OnceLock;

/// An output buffer that parallel tasks write through, each to cells no other task writes
/// (the fused ops' panels and head blocks).
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint cells through it; the buffer outlives the parallel call.
unsafe impl Sync for SendPtr {}
// SAFETY: as above; the pointer is only shared with tasks of the call that owns the buffer.
unsafe impl Send for SendPtr {}

fn has_avx2() -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

fn has_avx512() -> bool {
    static AVX512: OnceLock<bool> = OnceLock::new();
    *AVX512.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2() && is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Defines `pub fn $name($args)` that runs `$body` built for AVX-512 or AVX2 + FMA when the
/// CPU has them.
macro_rules! multiversion {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        multiversion! { $(#[$doc])* fn $name($($arg: $ty),*) -> () $body }
    };
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn portable($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) -> $ret {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) -> $ret {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx512() {
                // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked above).
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { avx2($($arg),*) };
            }
            portable($($arg),*)
        }
    };
}

/// Lane-wise partial sums, so that the reduction vectorises (a single running sum cannot be
/// reordered by the compiler).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

multiversion! {
    /// The dot product of two vectors (sixteen running sums, so that the reduction
    /// vectorises).
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..16 {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

#[inline(always)]
fn max_abs(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(x.abs());
        }
    }
    rest.iter().fold(acc.iter().fold(0f32, |m, &x| m.max(x)), |m, x| m.max(x.abs()))
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(*x);
        }
    }
    acc.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

multiversion! {
    /// Softmax of one row, in place.
    fn softmax(row: &mut [f32]) {
        let m = max(row);
        for x in row.iter_mut() {
            *x = super::encoder::exp_neg(m - *x);
        }
        let inv = 1.0 / sum(row);
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

multiversion! {
    /// Symmetric int8 quantisation of one row: `q = round(x / scale)` with
    /// `scale = max|x| / 127` (1 for a zero row), written to `q`; the scale to `scale[0]`.
    fn quantize(x: &[f32], q: &mut [i8], scale: &mut [f32]) {
        let amax = max_abs(x);
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scale[0] = s;
        let inv = 1.0 / s;
        for (q, v) in q.iter_mut().zip(x) {
            // Round half to even by the 1.5·2^23 trick: plain adds, which vectorise (`round`
            // is a library call). |v·inv| <= 127, so the integer conversion is exact.
            let r = ((v * inv).clamp(-127.0, 127.0) + 12_582_912.0) - 12_582_912.0;
            // SAFETY: `r` is a whole number in [-127, 127], which i32 represents exactly.
            *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
        }
    }
}

multiversion! {
    /// One output row of an int8 product: `(sum - corr) · a · w_scale + bias`.
    fn dequantize(dst: &mut [f32], sums: &[i32], corr: &[i32], w_scale: &[f32], bias: &[f32], a: &[f32]) {
        let a = a[0];
        for ((((d, &s), &c), &w), &b) in dst.iter_mut().zip(sums).zip(corr).zip(w_scale).zip(bias) {
            *d = (s - c) as f32 * (a * w) + b;
        }
    }
}

multiversion! {
    /// One row of `layer_norm(x + r)` into `out` (`eps[0]` as in the checkpoint).
    fn add_layer_norm(out: &mut [f32], x: &[f32], r: &[f32], gamma: &[f32], beta: &[f32], eps: &[f32]) {
        for ((o, a), b) in out.iter_mut().zip(x).zip(r) {
            *o = a + b;
        }
        let n = out.len() as f32;
        let mean = sum(out) / n;
        for o in out.iter_mut() {
            *o -= mean;
        }
        let mut sq = [0f32; 16];
        let chunks = out.chunks_exact(16);
        let rest: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for (s, v) in sq.iter_mut().zip(c) {
                *s += v * v;
            }
        }
        let var = (sq.iter().sum::<f32>() + rest) / n;
        let inv = 1.0 / (var + eps[0]).sqrt();
        for ((o, g), b) in out.iter_mut().zip(gamma).zip(beta) {
            *o = *o * inv * g + b;
        }
    }
}

multiversion! {
    /// Exact (erf) GELU, in place.
    fn gelu(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = super::encoder::gelu(*x);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reductions_and_softmax_match_plain_loops() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 / 3.0 - 4.0).collect();
        assert_eq!(super::max(&xs), xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
        assert_eq!(super::max_abs(&xs), xs.iter().fold(0f32, |m, &x| m.max(x.abs())));
        assert!((super::sum(&xs) - xs.iter().sum::<f32>()).abs() < 1e-4);
        let mut row = xs.clone();
        super::softmax(&mut row);
        let m = xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let z: f32 = xs.iter().map(|x| (x - m).exp()).sum();
        for (p, x) in row.iter().zip(&xs) {
            assert!((p - (x - m).exp() / z).abs() < 1e-6);
        }
        let (mut q, mut s) = (vec![0i8; 37], [0f32]);
        super::quantize(&xs, &mut q, &mut s);
        for (q, x) in q.iter().zip(&xs) {
            assert_eq!(*q as f32, (x / s[0]).round_ties_even());
        }
    }
}
