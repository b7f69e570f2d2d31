//! The one probe of the CPU's vector extensions, read once; every kernel asks here.

/// Whether AVX2, FMA and F16C may be used: every x86 kernel here needs all three.
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether AVX-512 F and BW may be used (besides [`avx2`]'s features);
/// `CAMELID_NO_AVX512=1` says no, to compare the AVX2 paths on one machine.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::env::var("CAMELID_NO_AVX512").map_or(true, |v| v != "1")
                && avx2()
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether AVX-512 VNNI (`vpdpbusd` on 512 bits) may be used (besides [`avx512`]'s features);
/// `CAMELID_NO_VNNI=1` says no, to compare the plain flavours on one machine.
pub fn avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| avx512() && !no_vnni() && is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether AVX-VNNI (`vpdpbusd` on 256 bits, VEX-encoded) may be used (besides [`avx2`]'s
/// features); `CAMELID_NO_VNNI=1` says no.
pub fn avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| avx2() && !no_vnni() && is_x86_feature_detected!("avxvnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn no_vnni() -> bool {
    std::env::var("CAMELID_NO_VNNI").is_ok_and(|v| v == "1")
}
