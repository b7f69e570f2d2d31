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

/// Whether AMX-INT8 tiles may be used (besides [`avx512_vnni`]'s features): the CPU lists
/// AMX-TILE and AMX-INT8 and Linux granted this process the tile state (asked here, once:
/// without the grant the first tile instruction faults). `CAMELID_NO_AMX=1` says no.
pub fn amx() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            if std::env::var("CAMELID_NO_AMX").is_ok_and(|v| v == "1") || !avx512_vnni() {
                return false;
            }
            // CPUID.(EAX = 7, ECX = 0):EDX bit 24 is AMX-TILE, bit 25 AMX-INT8.
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            leaf.edx & (3 << 24) == 3 << 24 && request_tile_state()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// In tests of kernels a CPU may lack: whether to skip them because this process does not
/// run them (`present` false). Skipping is said on stderr; with `require` set to 1 (tests/run.sh
/// sets it where the CPU lists the extension) it is a failure instead, so a lost grant or a
/// detection bug cannot pass as a machine without it.
#[cfg(test)]
fn skip_unless(what: &str, present: bool, require: &str, kernels: &str, why: &str) -> bool {
    if present {
        return false;
    }
    assert!(
        std::env::var(require).map_or(true, |v| v != "1"),
        "{what}: {require}=1 but this process does not run {kernels} ({why})"
    );
    eprintln!("{what}: no {kernels} here ({why}): skipped");
    true
}

/// [`skip_unless`] for AMX kernels (`CAMELID_REQUIRE_AMX`).
#[cfg(test)]
pub(crate) fn skip_without_amx(what: &str, present: bool) -> bool {
    skip_unless(
        what,
        present,
        "CAMELID_REQUIRE_AMX",
        "AMX",
        "CAMELID_NO_AMX=1, no grant of the tile state, or the CPU lacks it",
    )
}

/// [`skip_unless`] for AVX-512 (VNNI) kernels (`CAMELID_REQUIRE_AVX512`, set where the CPU
/// lists AVX-512 F, BW and VNNI).
#[cfg(test)]
pub(crate) fn skip_without_avx512(what: &str, present: bool) -> bool {
    skip_unless(
        what,
        present,
        "CAMELID_REQUIRE_AVX512",
        "AVX-512 VNNI",
        "CAMELID_NO_AVX512=1, a detection bug, or the CPU lacks it",
    )
}

/// Whether AMX-BF16 tiles (`tdpbf16ps`) and AVX-512 BF16 may be used (besides [`amx`]'s
/// features and grant): the 16-bit weights' matmul on tiles (`f16gemm`). `CAMELID_NO_AMX=1`
/// says no here too.
pub fn amx_bf16() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID.(EAX = 7, ECX = 0):EDX bit 22 is AMX-BF16.
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            amx() && leaf.edx & (1 << 22) != 0 && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Whether the quantized kernels leave streaming their weights to the hardware prefetcher
/// where software prefetches cost more than they bring (`quant::x86`: a lone row's pass; the
/// K formats' passes of several rows prefetch into L2 instead, farther ahead). On Intel's
/// cores the kernels waited on memory without software prefetches; on AMD Zen 4 the hardware
/// prefetcher streams the weights alone, and the software prefetches made a lone row's pass
/// up to ~2.3× slower (Q4_1, Q4_K; benches/README, Sessions 34 and 35). So: yes on AMD (and
/// Hygon), no elsewhere; `CAMELID_HARDWARE_PREFETCH=1` or `=0` says which.
pub fn lean_on_hardware_prefetch() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(
        || match std::env::var("CAMELID_HARDWARE_PREFETCH").as_deref() {
            Ok("1") => true,
            Ok("0") => false,
            _ => amd_like(),
        },
    )
}

/// Whether the K kernels move Q5_K's fifth bits into place by shifts rather than by a mask
/// test (`vptestmb` and a masked add). On AMD Zen 4 the mask test takes one of `vpdpbusd`'s
/// issue slots, while shifts and logic run beside it: by shifts, Q5_K's 8-row passes ran
/// 1.12× as fast (benches/README, Session 37). Intel's cores run vector shifts on the port
/// of `vpdpbusd` and the mask test on another, so they keep the test (measured there until
/// Session 33). So: yes on AMD (and Hygon), no elsewhere; `CAMELID_Q5_SHIFTS=1` or `=0`
/// says which.
pub fn q5_fifth_bits_by_shifts() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("CAMELID_Q5_SHIFTS").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => amd_like(),
    })
}

/// Whether CPUID's vendor is AMD's (or Hygon's, its licensee).
fn amd_like() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
        let leaf = std::arch::x86_64::__cpuid(0);
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&leaf.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&leaf.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&leaf.ecx.to_le_bytes());
        &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, then reads the permission back.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_state() -> bool {
    const ARCH_GET_XCOMP_PERM: libc::c_long = 0x1022;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    let mut perm: u64 = 0;
    // Safety: the request takes two integers; the read writes one u64 through the pointer.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
            && libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_GET_XCOMP_PERM,
                &mut perm as *mut u64,
            ) == 0
            && perm & (1 << XFEATURE_XTILEDATA) != 0
    }
}

fn no_vnni() -> bool {
    std::env::var("CAMELID_NO_VNNI").is_ok_and(|v| v == "1")
}
